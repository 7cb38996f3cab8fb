/*
 * qmprt-exec: qmprt's in-guest exec helper. Multiplexes many sessions (processes with or without a
 * pty, TCP connections to guest ports) over one virtio-serial port with a single poll() loop.
 *
 *   qmprt-exec [-d] [PORT]     PORT defaults to /dev/virtio-ports/io.qmprt.exec.0; -d daemonizes
 *   qmprt-exec -r              reseed the kernel's RNG from stdin (up to 512 bytes, credited as
 *                              entropy, then RNDRESEEDCRNG): a VM cloned from a template must not
 *                              draw the same random numbers as its siblings
 *
 * Written in C and linked statically so one binary runs on any x86_64 guest: the busybox tiny guest
 * (no Python), Debian, and stock cloud images that get it through the cloud-init seed.
 *
 * Frames, both directions: type u8 | session u32 BE | length u32 BE | payload (length <= 64 KiB).
 * Host -> guest:
 *   HELLO   1  session 0, payload nonce u32: kill every session, answer HELLO version u32 | nonce u32
 *   SPAWN   2  flags u8 (1 tty, 2 stdin) | rows u16 | cols u16 | argc u16 | envc u16 |
 *              workdir NUL | argv[0] NUL ... | env "K=V" NUL ...   (all integers big-endian)
 *   STDIN   3  data; zero length closes stdin
 *   RESIZE  4  rows u16 | cols u16
 *   SIGNAL  5  signo u32, to the foreground process group (tty) or the session's group
 *   CLOSE   6  SIGKILL the process group (or close the connection) and forget the session
 *   CONNECT 7  port u16: connect to 127.0.0.1:port, else [::1]:port; STDIN/STDOUT carry the bytes
 *   CREDIT  8  bytes u32: the host consumed that much of the session's output
 * Guest -> host:
 *   HELLO   1  version u32 | nonce u32
 *   CREDIT  8  bytes u32: the guest wrote that much of the session's stdin
 *   STARTED 129 pid u32 (0 for a connection)
 *   STDOUT  130 data; zero length is EOF     STDERR 131 the same for stderr
 *   EXIT    132 code u32 (128+signal when killed), after stdout and stderr reached EOF
 *   ERROR   133 code u32 | message: the session is over (127 not found, 126 not executable, 1 other);
 *               session 0: a frame the helper could not use
 * Each side keeps at most WINDOW bytes of a session's data in flight toward the other.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/random.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define VERSION 1
#define MAX_PAYLOAD (64 * 1024)
#define WINDOW (256 * 1024)
#define MAX_SESSIONS 1024
#define OUT_HIGH (512 * 1024) /* stop reading sessions while this much waits for the port */
#define STDIN_CAP (WINDOW + MAX_PAYLOAD)

enum { T_HELLO = 1, T_SPAWN, T_STDIN, T_RESIZE, T_SIGNAL, T_CLOSE, T_CONNECT, T_CREDIT };
enum { T_STARTED = 129, T_STDOUT, T_STDERR, T_EXIT, T_ERROR };

struct session {
    uint32_t id;
    int is_tcp, tty;
    pid_t pid;
    int exited, status;
    int in_fd;          /* stdin pipe, pty master or socket; -1 once closed */
    int out_fd, err_fd; /* -1 once at EOF (for a pty, out_fd is the master and stays open) */
    int connecting;     /* a TCP connect in progress; 1 = IPv4 tried, 2 = IPv6 tried */
    uint16_t port;
    unsigned char *inbuf;
    size_t inlen;
    int stdin_eof;      /* close in_fd once inbuf is written */
    long credit;        /* bytes we may still send toward the host */
};

static struct session *sessions[MAX_SESSIONS];
static int nsessions;
static int port_fd = -1, port_up = 1;
static int sigchld_pipe[2];
static unsigned char *outbuf;
static size_t outlen, outcap;
static unsigned char inhdr[9], *inpayload;
static size_t ingot;    /* bytes of the current frame received (header + payload) */

static void put32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static uint32_t get32(const unsigned char *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) { perror("qmprt-exec: out of memory"); exit(1); }
    return q;
}

static void send_frame(int type, uint32_t sid, const void *data, size_t len) {
    if (outlen + 9 + len > outcap) {
        outcap = (outlen + 9 + len) * 2;
        outbuf = xrealloc(outbuf, outcap);
    }
    unsigned char *p = outbuf + outlen;
    p[0] = type;
    put32(p + 1, sid);
    put32(p + 5, len);
    if (len) memcpy(p + 9, data, len);
    outlen += 9 + len;
}

static void send_u32(int type, uint32_t sid, uint32_t v) {
    unsigned char b[4];
    put32(b, v);
    send_frame(type, sid, b, 4);
}

static void send_error(uint32_t sid, uint32_t code, const char *msg) {
    unsigned char b[4 + 512];
    size_t n = strlen(msg);
    if (n > 512) n = 512;
    put32(b, code);
    memcpy(b + 4, msg, n);
    send_frame(T_ERROR, sid, b, 4 + n);
}

static struct session *find(uint32_t sid) {
    for (int i = 0; i < nsessions; i++)
        if (sessions[i]->id == sid) return sessions[i];
    return NULL;
}

static void close_fd(int *fd) { if (*fd >= 0) close(*fd); *fd = -1; }

static void free_session(struct session *s) {
    if (s->pid > 0 && !s->exited) kill(-s->pid, SIGKILL);
    if (s->out_fd == s->in_fd) s->out_fd = -1;
    close_fd(&s->in_fd);
    close_fd(&s->out_fd);
    close_fd(&s->err_fd);
    free(s->inbuf);
    for (int i = 0; i < nsessions; i++)
        if (sessions[i] == s) { sessions[i] = sessions[--nsessions]; break; }
    free(s);
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static struct session *new_session(uint32_t sid) {
    if (sid == 0 || find(sid)) { send_error(sid, 1, "session id in use"); return NULL; }
    if (nsessions >= MAX_SESSIONS) { send_error(sid, 1, "too many sessions"); return NULL; }
    struct session *s = calloc(1, sizeof *s);
    if (!s) { send_error(sid, 1, "out of memory"); return NULL; }
    s->id = sid;
    s->in_fd = s->out_fd = s->err_fd = -1;
    s->credit = WINDOW;
    sessions[nsessions++] = s;
    return s;
}

/* ---- SPAWN ---- */

struct spawn_req {
    int tty, want_stdin;
    struct winsize ws;
    char *workdir;
    char **argv, **env;
};

/* Parses a SPAWN payload into req (pointers into p, which must be NUL-terminated past len). */
static const char *parse_spawn(unsigned char *p, size_t len, struct spawn_req *req) {
    if (len < 9) return "short SPAWN frame";
    req->tty = p[0] & 1;
    req->want_stdin = (p[0] & 2) != 0;
    memset(&req->ws, 0, sizeof req->ws);
    req->ws.ws_row = get16(p + 1);
    req->ws.ws_col = get16(p + 3);
    unsigned argc = get16(p + 5), envc = get16(p + 7);
    if (argc == 0) return "empty argv";
    char **strs = calloc(argc + envc + 3, sizeof *strs);
    if (!strs) return "out of memory";
    size_t off = 9;
    for (unsigned i = 0; i < 1 + argc + envc; i++) {
        unsigned char *nul = off < len ? memchr(p + off, 0, len - off) : NULL;
        if (!nul) { free(strs); return "truncated SPAWN strings"; }
        strs[i + (i > argc ? 1 : 0)] = (char *)p + off;
        off = nul - p + 1;
    }
    req->workdir = strs[0];
    req->argv = strs + 1;        /* argv[argc] is the NULL at strs[argc + 1] */
    req->env = strs + argc + 2;  /* env[envc] is NULL too */
    return NULL;
}

static char **child_env(struct spawn_req *req) {
    static const char *defaults[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                     "HOME=/root", NULL};
    size_t n = 0;
    while (req->env[n]) n++;
    char **env = calloc(n + 4, sizeof *env);
    size_t k = 0;
    for (const char **d = defaults; *d; d++) {
        size_t keylen = strchr(*d, '=') - *d + 1;
        int overridden = 0;
        for (size_t i = 0; i < n; i++) overridden |= strncmp(req->env[i], *d, keylen) == 0;
        if (!overridden) env[k++] = (char *)*d;
    }
    if (req->tty) {
        int has_term = 0;
        for (size_t i = 0; i < n; i++) has_term |= strncmp(req->env[i], "TERM=", 5) == 0;
        if (!has_term) env[k++] = "TERM=xterm";
    }
    for (size_t i = 0; i < n; i++) env[k++] = req->env[i];
    env[k] = NULL;
    return env;
}

/* In the child: never returns. report is the CLOEXEC pipe that tells the parent why exec failed. */
static void run_child(struct spawn_req *req, int slave, int fds[3], int report) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Every disposition back to default: a helper started from a script's background job
     * inherits SIGINT and SIGQUIT ignored, and exec would pass that on (^C would do nothing). */
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);
    if (req->tty) {
        setsid();
        ioctl(slave, TIOCSCTTY, 0);
        if (req->ws.ws_row && req->ws.ws_col) ioctl(slave, TIOCSWINSZ, &req->ws);
        fds[0] = fds[1] = fds[2] = slave;
    } else {
        setpgid(0, 0);
    }
    for (int i = 0; i < 3; i++) {
        int fd = fds[i];
        if (fd == i) fcntl(fd, F_SETFD, 0);
        else dup2(fd, i);
    }
    int stage_errno[2] = {0, 0};
    if (req->workdir[0] && chdir(req->workdir) < 0) {
        stage_errno[1] = errno;
    } else {
        environ = child_env(req);
        execvp(req->argv[0], req->argv);
        stage_errno[0] = 1;
        stage_errno[1] = errno;
    }
    ssize_t ignored = write(report, stage_errno, sizeof stage_errno);
    (void)ignored;
    _exit(127);
}

static void spawn_failed(struct session *s, const char *argv0, const char *workdir, int stage_errno[2]) {
    char msg[600];
    int code = 1;
    if (stage_errno[0] == 0) {
        snprintf(msg, sizeof msg, "sh: cd: %.200s: %s", workdir, strerror(stage_errno[1]));
    } else if (stage_errno[1] == ENOENT) {
        snprintf(msg, sizeof msg, "sh: %.200s: not found", argv0);
        code = 127;
    } else {
        snprintf(msg, sizeof msg, "sh: %.200s: %s", argv0, strerror(stage_errno[1]));
        code = stage_errno[1] == EACCES || stage_errno[1] == ENOEXEC ? 126 : 127;
    }
    send_error(s->id, code, msg);
    free_session(s);
}

static int open_pty(int *master, int *slave) {
    *master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (*master < 0) return -1;
    if (grantpt(*master) < 0 || unlockpt(*master) < 0) { close(*master); return -1; }
    char *name = ptsname(*master);
    *slave = name ? open(name, O_RDWR | O_NOCTTY | O_CLOEXEC) : -1;
    if (*slave < 0) { close(*master); return -1; }
    return 0;
}

static void do_spawn(uint32_t sid, unsigned char *p, size_t len) {
    struct spawn_req req;
    const char *bad = parse_spawn(p, len, &req);
    if (bad) { send_error(sid, 1, bad); return; }
    struct session *s = new_session(sid);
    if (!s) { free(req.argv - 1); return; }
    s->tty = req.tty;
    int child_fds[3] = {-1, -1, -1}, slave = -1, pipes[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
    int report[2] = {-1, -1};
    int ok = pipe2(report, O_CLOEXEC) == 0;
    if (ok && req.tty) {
        ok = open_pty(&s->out_fd, &slave) == 0;
        if (ok) s->in_fd = dup(s->out_fd);
        if (ok) fcntl(s->in_fd, F_SETFD, FD_CLOEXEC);
    } else if (ok) {
        for (int i = 0; i < 3 && ok; i++) ok = pipe2(pipes[i], O_CLOEXEC) == 0;
        child_fds[0] = pipes[0][0]; s->in_fd = pipes[0][1];  /* -1s when a pipe failed: freed below */
        child_fds[1] = pipes[1][1]; s->out_fd = pipes[1][0];
        child_fds[2] = pipes[2][1]; s->err_fd = pipes[2][0];
    }
    pid_t pid = ok ? fork() : -1;
    if (pid == 0) run_child(&req, slave, child_fds, report[1]);
    if (slave >= 0) close(slave);
    for (int i = 0; i < 3; i++) { if (child_fds[i] >= 0) close(child_fds[i]); }
    if (pid < 0) {
        int saved = errno;
        for (int i = 0; i < 2; i++) close_fd(&report[i]);
        send_error(sid, 1, strerror(saved));
        free_session(s);
        free(req.argv - 1);
        return;
    }
    close(report[1]);
    int stage_errno[2];
    ssize_t n;
    do n = read(report[0], stage_errno, sizeof stage_errno); while (n < 0 && errno == EINTR);
    close(report[0]);
    s->pid = pid;
    if (n == sizeof stage_errno) {
        s->exited = 1;  /* reaped by the SIGCHLD handler's loop later */
        spawn_failed(s, req.argv[0], req.workdir, stage_errno);
    } else {
        for (int *fd = &s->in_fd; fd <= &s->err_fd; fd++) if (*fd >= 0) set_nonblock(*fd);
        if (!req.want_stdin && !req.tty) close_fd(&s->in_fd);
        send_u32(T_STARTED, sid, pid);
    }
    free(req.argv - 1);
}

/* ---- CONNECT ---- */

static int start_connect(struct session *s) {
    int v6 = s->connecting == 1;
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int r;
    if (v6) {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(s->port), .sin6_addr = in6addr_loopback};
        r = connect(fd, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(s->port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        r = connect(fd, (struct sockaddr *)&a, sizeof a);
    }
    if (r < 0 && errno != EINPROGRESS) { close(fd); return -1; }
    s->in_fd = s->out_fd = fd;
    s->connecting++;
    return 0;
}

/* Called when the connecting socket is writable, or to begin. */
static void advance_connect(struct session *s) {
    if (s->in_fd >= 0) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(s->in_fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err == 0) { s->connecting = 0; send_u32(T_STARTED, s->id, 0); return; }
        close(s->in_fd);
        s->in_fd = s->out_fd = -1;
    }
    while (s->connecting < 2) {
        if (start_connect(s) == 0) return;
        s->connecting++;
    }
    char msg[80];
    snprintf(msg, sizeof msg, "cannot connect to port %u in the guest: connection refused", s->port);
    send_error(s->id, 1, msg);
    free_session(s);
}

/* ---- frames from the host ---- */

static void kill_all(void) {
    while (nsessions) free_session(sessions[0]);
}

static void do_stdin(struct session *s, unsigned char *p, size_t len) {
    if (s->stdin_eof) return;
    if (len == 0) { s->stdin_eof = 1; return; }
    if (s->in_fd < 0 && !s->connecting) { send_u32(T_CREDIT, s->id, len); return; }
    if (s->inlen + len > STDIN_CAP) { send_error(0, 1, "stdin beyond the credit window dropped"); return; }
    s->inbuf = xrealloc(s->inbuf, s->inlen + len);
    memcpy(s->inbuf + s->inlen, p, len);
    s->inlen += len;
}

static void handle_frame(int type, uint32_t sid, unsigned char *p, size_t len) {
    if (type == T_HELLO) {
        kill_all();
        unsigned char b[8];
        put32(b, VERSION);
        put32(b + 4, len >= 4 ? get32(p) : 0);
        send_frame(T_HELLO, 0, b, 8);
        return;
    }
    if (type == T_SPAWN) { do_spawn(sid, p, len); return; }
    if (type == T_CONNECT) {
        if (len < 2) { send_error(sid, 1, "short CONNECT frame"); return; }
        struct session *s = new_session(sid);
        if (!s) return;
        s->is_tcp = 1;
        s->port = get16(p);
        advance_connect(s);
        return;
    }
    struct session *s = find(sid);
    if (!s) return;  /* already gone: the host learns from EXIT/ERROR */
    switch (type) {
    case T_STDIN: do_stdin(s, p, len); break;
    case T_RESIZE:
        if (len >= 4 && s->tty && s->in_fd >= 0) {
            struct winsize ws = {.ws_row = get16(p), .ws_col = get16(p + 2)};
            ioctl(s->in_fd, TIOCSWINSZ, &ws);
        }
        break;
    case T_SIGNAL:
        if (len >= 4 && s->pid > 0 && !s->exited) {
            pid_t group = s->tty && s->in_fd >= 0 ? tcgetpgrp(s->in_fd) : -1;
            if (group <= 0 || kill(-group, get32(p)) < 0) kill(-s->pid, get32(p));
        }
        break;
    case T_CLOSE: free_session(s); break;
    case T_CREDIT: if (len >= 4) s->credit += get32(p); if (s->credit > WINDOW) s->credit = WINDOW; break;
    default: send_error(0, 1, "unknown frame type");
    }
}

/* Feeds bytes read from the port through the frame parser. */
static void parse_port(const unsigned char *data, size_t n) {
    while (n) {
        if (ingot < 9) {
            size_t take = 9 - ingot < n ? 9 - ingot : n;
            memcpy(inhdr + ingot, data, take);
            ingot += take; data += take; n -= take;
            if (ingot < 9) return;
        }
        size_t len = get32(inhdr + 5), want = 9 + len - ingot;
        size_t take = want < n ? want : n;
        if (len <= MAX_PAYLOAD) memcpy(inpayload + ingot - 9, data, take);
        ingot += take; data += take; n -= take;
        if (ingot < 9 + len) return;
        ingot = 0;
        if (len > MAX_PAYLOAD) { send_error(0, 1, "frame too large, ignored"); continue; }
        inpayload[len] = 0;  /* parse_spawn relies on a NUL past the payload */
        handle_frame(inhdr[0], get32(inhdr + 1), inpayload, len);
    }
}

/* ---- sessions' own fds ---- */

static void on_sigchld(int sig) {
    (void)sig;
    int saved = errno;
    ssize_t ignored = write(sigchld_pipe[1], "c", 1);
    (void)ignored;
    errno = saved;
}

static void reap(void) {
    char drain[64];
    while (read(sigchld_pipe[0], drain, sizeof drain) > 0) {}
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < nsessions; i++) {
            struct session *s = sessions[i];
            if (s->pid == pid && !s->exited) {
                s->exited = 1;
                s->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
        }
    }
}

/* Reads what credit allows from *fd into a STDOUT/STDERR frame; EOF (or a pty's EIO) closes it.
 * force_eof_when_empty: a pty whose process exited ends once nothing more is buffered. */
static void pump_output(struct session *s, int *fd, int type, int force_eof_when_empty) {
    if (*fd < 0 || s->credit <= 0) return;
    static unsigned char buf[MAX_PAYLOAD];
    size_t want = s->credit < MAX_PAYLOAD ? (size_t)s->credit : MAX_PAYLOAD;
    ssize_t n = read(*fd, buf, want);
    if (n > 0) { send_frame(type, s->id, buf, n); s->credit -= n; return; }
    if (n < 0 && (errno == EAGAIN || errno == EINTR) && !force_eof_when_empty) return;
    if (*fd == s->in_fd) {  /* pty master or socket: keep the write side's fd, just mark the read side */
        if (s->is_tcp) shutdown(*fd, SHUT_RD);
        *fd = -1;
    } else {
        close_fd(fd);
    }
    send_frame(type, s->id, NULL, 0);
}

static void pump_input(struct session *s) {
    if (s->in_fd < 0 || s->connecting) return;
    if (s->inlen) {
        ssize_t n = write(s->in_fd, s->inbuf, s->inlen);
        if (n < 0 && errno == EAGAIN) return;
        if (n < 0) n = s->inlen;  /* EPIPE: the reader is gone, discard (and still give credit) */
        memmove(s->inbuf, s->inbuf + n, s->inlen - n);
        s->inlen -= n;
        send_u32(T_CREDIT, s->id, n);
    }
    if (s->inlen == 0 && s->stdin_eof) {
        if (s->tty) {
            static const unsigned char eot = 4;  /* ^D: the pty's EOF for a canonical-mode reader */
            if (write(s->in_fd, &eot, 1) < 0 && errno == EAGAIN) return;
            s->stdin_eof = 0;
            s->tty = 2;  /* marker: ^D sent, keep the master */
        } else if (s->is_tcp) {
            shutdown(s->in_fd, SHUT_WR);
            s->stdin_eof = 0;
            s->is_tcp = 2;
        } else {
            close_fd(&s->in_fd);
        }
    }
}

/* A session whose output ended and whose process exited (or a connection closed both ways) is over. */
static int finish_if_done(struct session *s) {
    if (s->out_fd >= 0 || s->err_fd >= 0 || s->connecting) return 0;
    if (s->is_tcp) {
        if (s->is_tcp != 2 && s->in_fd >= 0) return 0;
        send_u32(T_EXIT, s->id, 0);
    } else {
        if (!s->exited) return 0;
        send_u32(T_EXIT, s->id, s->status);
        s->pid = 0;
    }
    free_session(s);
    return 1;
}

/* ---- the loop ---- */

static void write_port(void) {
    if (!outlen || !port_up) return;
    ssize_t n = write(port_fd, outbuf, outlen);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) { outlen = 0; port_up = 0; return; }  /* nobody on the host side: this data is lost */
    memmove(outbuf, outbuf + n, outlen - n);
    outlen -= n;
}

static void read_port(void) {
    static unsigned char buf[MAX_PAYLOAD];
    ssize_t n = read(port_fd, buf, sizeof buf);
    if (n > 0) { parse_port(buf, n); return; }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    port_up = 0;  /* 0: the host side is not connected; poll again after a pause */
    ingot = 0;
}

static void loop(void) {
    static struct pollfd pfds[2 + 3 * MAX_SESSIONS];
    static struct session *owner[2 + 3 * MAX_SESSIONS];
    static int role[2 + 3 * MAX_SESSIONS];
    for (;;) {
        int n = 0;
        pfds[n++] = (struct pollfd){.fd = sigchld_pipe[0], .events = POLLIN};
        if (!port_up) {  /* nobody on the host side: sleep, then try the port again (no spinning) */
            if (poll(pfds, 1, 200) > 0) reap();
            port_up = 1;
            continue;
        }
        int port_slot = -1;
        {
            port_slot = n;
            pfds[n++] = (struct pollfd){.fd = port_fd, .events = POLLIN | (outlen ? POLLOUT : 0)};
        }
        int reading = outlen < OUT_HIGH;
        for (int i = 0; i < nsessions; i++) {
            struct session *s = sessions[i];
            if (s->connecting) { owner[n] = s; role[n] = 3; pfds[n++] = (struct pollfd){.fd = s->in_fd, .events = POLLOUT}; continue; }
            if (s->in_fd >= 0 && (s->inlen || s->stdin_eof)) { owner[n] = s; role[n] = 0; pfds[n++] = (struct pollfd){.fd = s->in_fd, .events = POLLOUT}; }
            if (!reading || s->credit <= 0) continue;
            if (s->out_fd >= 0) { owner[n] = s; role[n] = 1; pfds[n++] = (struct pollfd){.fd = s->out_fd, .events = POLLIN}; }
            if (s->err_fd >= 0) { owner[n] = s; role[n] = 2; pfds[n++] = (struct pollfd){.fd = s->err_fd, .events = POLLIN}; }
        }
        if (poll(pfds, n, -1) < 0 && errno != EINTR) { perror("qmprt-exec: poll"); exit(1); }
        if (pfds[0].revents) reap();
        if (port_slot >= 0) {
            short r = pfds[port_slot].revents;
            if (r & POLLOUT) write_port();
            if (r & POLLIN) read_port();
            else if (r & (POLLHUP | POLLERR)) { port_up = 0; ingot = 0; }
        }
        /* Sessions may have been freed by port frames: act only on those still present. */
        for (int k = 2; k < n; k++) {
            struct session *s = owner[k];
            if (!pfds[k].revents) continue;
            int alive = 0;
            for (int i = 0; i < nsessions && !alive; i++) alive = sessions[i] == s;
            if (!alive) continue;
            if (role[k] == 3) advance_connect(s);
            else if (role[k] == 0) pump_input(s);
            else if (role[k] == 1 && s->out_fd >= 0) pump_output(s, &s->out_fd, T_STDOUT, 0);
            else if (role[k] == 2 && s->err_fd >= 0) pump_output(s, &s->err_fd, T_STDERR, 0);
        }
        for (int i = 0; i < nsessions; i++) {
            struct session *s = sessions[i];
            if (s->in_fd >= 0 && (s->inlen || s->stdin_eof) && !s->connecting) pump_input(s);
            if (s->tty && s->exited && s->out_fd >= 0) pump_output(s, &s->out_fd, T_STDOUT, 1);
        }
        for (int i = nsessions - 1; i >= 0; i--)
            if (i < nsessions) finish_if_done(sessions[i]);
        write_port();
    }
}

static int open_port(const char *path) {
    for (int tries = 0; tries < 50; tries++) {  /* the port may still be appearing: up to 5 s */
        int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd >= 0) return fd;
        if (errno != ENOENT) break;
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    fprintf(stderr, "qmprt-exec: cannot open %s: %s\n", path, strerror(errno));
    exit(1);
}

static int reseed(void) {
    enum { MAX_SEED = 512 };
    struct rand_pool_info *pool = xrealloc(NULL, sizeof *pool + MAX_SEED);
    unsigned char *bytes = (unsigned char *)pool->buf;
    size_t got = 0;
    ssize_t n;
    while (got < MAX_SEED && (n = read(0, bytes + got, MAX_SEED - got)) > 0) got += (size_t)n;
    if (got < 32) { fprintf(stderr, "qmprt-exec: reseed needs at least 32 bytes on stdin, got %zu\n", got); return 2; }
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) { perror("qmprt-exec: /dev/urandom"); return 1; }
    pool->entropy_count = (int)(got * 8);
    pool->buf_size = (int)got;
    int failed = ioctl(fd, RNDADDENTROPY, pool) < 0 || ioctl(fd, RNDRESEEDCRNG) < 0;
    if (failed) perror("qmprt-exec: reseed");
    close(fd);
    return failed;
}

int main(int argc, char **argv) {
    int daemonize = 0, opt;
    while ((opt = getopt(argc, argv, "dr")) != -1) {
        if (opt == 'd') daemonize = 1;
        else if (opt == 'r') return reseed();
        else { fprintf(stderr, "usage: qmprt-exec [-d] [PORT] | qmprt-exec -r < SEED\n"); return 2; }
    }
    const char *path = optind < argc ? argv[optind] : "/dev/virtio-ports/io.qmprt.exec.0";
    port_fd = open_port(path);  /* before daemonizing, so a second instance (EBUSY) fails visibly */
    if (daemonize) {
        pid_t pid = fork();
        if (pid < 0) { perror("qmprt-exec: fork"); return 1; }
        if (pid > 0) return 0;
        setsid();
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); if (null > 2) close(null); }
        if (chdir("/") < 0) return 1;
    }
    inpayload = xrealloc(NULL, MAX_PAYLOAD + 1);
    if (pipe2(sigchld_pipe, O_CLOEXEC | O_NONBLOCK) < 0) { perror("qmprt-exec: pipe"); return 1; }
    struct sigaction sa = {.sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    loop();
}
