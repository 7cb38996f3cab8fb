# yaml2sh.awk: turns the YAML subset that qmprt's seed writer emits into shell assignments.
#
#   busybox awk -v prefix=ud -f yaml2sh.awk user-data > user-data.sh
#   busybox awk -v prefixes='meta-data=md user-data=ud' -f yaml2sh.awk seed/meta-data seed/user-data
#
# With "prefixes", each file's prefix comes from its base name (one process for the whole seed).
#
# Accepted subset (qmprt/cloudinit/ never emits anything else):
#   - block mappings "key: value" / "key:" with a nested block, keys plain or double-quoted;
#   - block sequences "- value" / "- key: value" / "- - value" (a nested sequence), indented under
#     their key or at its indent;
#   - scalars: "double quoted" (escapes \" \\ \n \t \r \xXX \uXXXX \UXXXXXXXX decoded, the code
#     points written as UTF-8), 'single quoted' ('' escapes a quote), or plain;
#   - comment lines and blank lines; "---" document start.
# Output, for a path a.b.0.c (dashes in keys become "_"):
#   prefix_a_b_0_c='value'      a scalar
#   prefix_a_b__n=2             the length of a sequence
#   prefix_a__keys='b d'        the keys of a mapping, in order
# Values are single-quoted for sh, so any byte but NUL survives.

function shquote(s) {
    gsub(/'/, "'\\''", s)
    return "'" s "'"
}

function utf8(c) {
    if (c < 128)
        return sprintf("%c", c)
    if (c < 2048)
        return sprintf("%c%c", 192 + int(c / 64), 128 + c % 64)
    if (c < 65536)
        return sprintf("%c%c%c", 224 + int(c / 4096), 128 + int(c / 64) % 64, 128 + c % 64)
    return sprintf("%c%c%c%c", 240 + int(c / 262144), 128 + int(c / 4096) % 64, 128 + int(c / 64) % 64, 128 + c % 64)
}

function hexval(h,    i, v) {
    h = tolower(h)
    v = 0
    for (i = 1; i <= length(h); i++)
        v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1
    return v
}

# The body of a double-quoted scalar (after its opening quote), escapes decoded, up to its closing quote.
function unescape(rest,    out, i, c, n) {
    out = ""
    while ((i = match(rest, /["\\]/)) > 0) {
        out = out substr(rest, 1, i - 1)
        if (substr(rest, i, 1) == "\"")
            return out
        c = substr(rest, i + 1, 1)
        rest = substr(rest, i + 2)
        if (c == "n") out = out "\n"
        else if (c == "t") out = out "\t"
        else if (c == "r") out = out "\r"
        else if (c == "x" || c == "u" || c == "U") {
            n = (c == "x") ? 2 : (c == "u") ? 4 : 8
            out = out utf8(hexval(substr(rest, 1, n)))
            rest = substr(rest, n + 1)
        } else out = out c
    }
    return out rest
}

function unquote(v,    q, rest, out, i) {
    q = substr(v, 1, 1)
    if (q == "\"")
        return unescape(substr(v, 2))
    if (q == "'") {
        rest = substr(v, 2)
        out = ""
        while ((i = index(rest, "'")) > 0) {
            out = out substr(rest, 1, i - 1)
            rest = substr(rest, i + 1)
            if (substr(rest, 1, 1) != "'")
                return out
            out = out "'"
            rest = substr(rest, 2)
        }
        return out rest
    }
    # A plain scalar ends at " #" (a comment); trailing blanks are not part of it.
    i = index(v, " #")
    if (i > 0)
        v = substr(v, 1, i - 1)
    sub(/[ \t]+$/, "", v)
    return v
}

function varname(path,    n) {
    n = path
    gsub(/[^A-Za-z0-9_]/, "_", n)
    return prefix n
}

# Frames: depth, frame_indent[d], frame_path[d], frame_item[d] (1 for a sequence item).
function pop_to(indent, keep_key_at_indent) {
    while (depth > 0 && (frame_indent[depth] > indent ||
           (frame_indent[depth] == indent && !(keep_key_at_indent && !frame_item[depth]))))
        depth--
}

function current_path() {
    return depth > 0 ? frame_path[depth] : ""
}

function add_key(parent, key,    v) {
    v = varname(parent "__keys")
    if (!(v in keys_of)) {
        keys_of[v] = key
        order[++norder] = v
    } else {
        keys_of[v] = keys_of[v] " " key
    }
}

function mapping_entry(text, indent,    key, value, i, parent) {
    i = index(text, ":")
    key = substr(text, 1, i - 1)
    value = substr(text, i + 1)
    sub(/^[ \t]+/, "", value)
    key = unquote(key)
    parent = current_path()
    add_key(parent, key)
    if (value == "" || substr(value, 1, 1) == "#") {
        depth++
        frame_indent[depth] = indent
        frame_path[depth] = parent "_" key
        frame_item[depth] = 0
    } else {
        print varname(parent "_" key) "=" shquote(unquote(value))
    }
}

function flush(    i) {
    for (i = 1; i <= nseq; i++)
        print varname(seq_order[i] "__n") "=" seq_len[seq_order[i]]
    for (i = 1; i <= norder; i++)
        print order[i] "=" shquote(keys_of[order[i]])
    depth = 0; norder = 0; nseq = 0
    split("", keys_of); split("", seq_len)
}

BEGIN {
    depth = 0; norder = 0; nseq = 0
    n = split(prefixes, pairs, " ")
    for (i = 1; i <= n; i++) {
        eq = index(pairs[i], "=")
        prefix_of[substr(pairs[i], 1, eq - 1)] = substr(pairs[i], eq + 1)
    }
}

FNR == 1 && prefixes != "" {
    if (NR > 1)
        flush()
    base = FILENAME
    sub(/.*\//, "", base)
    prefix = prefix_of[base]
}

{
    sub(/\r$/, "")
    line = $0
    if (line ~ /^[ \t]*(#.*)?$/ || line ~ /^---[ \t]*$/)
        next
    match(line, /^ */)
    indent = RLENGTH
    text = substr(line, indent + 1)

    if (text ~ /^-( |$)/) {
        pop_to(indent, 1)
        parent = current_path()
        n = (parent in seq_len) ? seq_len[parent] : 0
        if (!(parent in seq_len))
            seq_order[++nseq] = parent
        seq_len[parent] = n + 1
        depth++
        frame_indent[depth] = indent
        frame_path[depth] = parent "_" n
        frame_item[depth] = 1
        text = substr(text, 2)
        match(text, /^ */)
        indent = indent + 1 + RLENGTH
        text = substr(text, RLENGTH + 1)
        # "- - value": the item is itself a sequence, whose first item starts on this line.
        while (text ~ /^-( |$)/) {
            parent = frame_path[depth]
            seq_order[++nseq] = parent
            seq_len[parent] = 1
            depth++
            frame_indent[depth] = indent
            frame_path[depth] = parent "_0"
            frame_item[depth] = 1
            text = substr(text, 2)
            match(text, /^ */)
            indent = indent + 1 + RLENGTH
            text = substr(text, RLENGTH + 1)
        }
        if (text == "")
            next
        if (text ~ /^("([^"\\]|\\.)*"|'[^']*'|[^"' #][^:#]*):( |$)/) {
            mapping_entry(text, indent)
        } else {
            print varname(frame_path[depth]) "=" shquote(unquote(text))
        }
        next
    }

    pop_to(indent, 0)
    mapping_entry(text, indent)
}

END { flush() }
