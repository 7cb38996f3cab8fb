# Sourced by the image recipes. The caller sets cache_root, entry (the cache directory of its recipe
# hash) and out_link (images/out/NAME); an entry is complete once its manifest.json exists.

# Point images/out/NAME at the entry, atomically.
point_link() {
    mkdir -p "$(dirname "$out_link")"
    if [ "$(readlink "$out_link" 2>/dev/null)" != "$entry" ]; then
        ln -sfn "$entry" "$out_link.new"
        mv -T "$out_link.new" "$out_link"
    fi
}

# Exit 0 (after pointing the link) when the entry is already built.
use_cached_entry() {
    if [ -f "$entry/manifest.json" ]; then
        point_link
        exit 0
    fi
}
