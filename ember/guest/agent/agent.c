/*
 * Ember guest agent: PID 1 of the guest's root (or a child of systemd).
 *
 * It starts the workload like `docker run` would, reaps zombies, records the
 * workload's exit on the config disk (so the host learns it even when nobody
 * was connected) and talks to the host over one byte stream (the virtio-serial
 * port named "ember.agent") using the framed protocol of ember/guest/protocol.py:
 *
 *   header (12 bytes, big endian): magic u8 0xE7, type u8, flags u8, rsvd u8,
 *                                  channel u32, length u32; then `length` bytes.
 *
 * Guest->host payloads are JSON; host->guest payloads are "key=value\0" records
 * (trivial to parse here without a JSON library). The config disk holds the
 * same kind of record at offset 4096; its first 4096 bytes receive the exit
 * record (JSON, NUL padded).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <libgen.h>
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <linux/random.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0xE7
#define HDR 12
#define MAX_PAYLOAD (1u << 20)
#define MAX_OUTQ (8u << 20)
#define EXIT_REGION 4096
#define CONFIG_OFFSET 4096
#define PORT_NAME "ember.agent"

enum {
    T_HELLO = 0x01, T_HELLO_ACK = 0x02, T_STATUS = 0x03, T_READY = 0x04, T_EXIT = 0x05,
    T_PING = 0x06, T_PONG = 0x07, T_SIGNAL = 0x08, T_SET_TIME = 0x09, T_SET_NETWORK = 0x0A,
    T_SET_IDENTITY = 0x0B,
    T_ERROR = 0x0F,
    T_EXEC_START = 0x10, T_EXEC_STARTED = 0x11, T_STDIN = 0x12, T_STDOUT = 0x13,
    T_STDERR = 0x14, T_RESIZE = 0x15, T_EXEC_EXIT = 0x16, T_CREDIT = 0x17, T_STAT = 0x20,
    T_MOUNT = 0x30, T_UNMOUNT = 0x31,
};
#define F_EOF 0x01
#define MAX_SESSIONS 64
#define WINDOW (256u << 10) /* initial per-channel credit, both directions */
#define CHUNK (32u << 10)

enum state { ST_STARTING, ST_RUNNING, ST_EXITED };
static const char *state_names[] = {"starting", "running", "exited"};

struct kv {  /* a parsed "key=value\0" record: pointers into the buffer */
    char *keys[1024];
    char *vals[1024];
    int n;
};

static struct {
    enum state state;
    pid_t pid;
    int exit_code;
    int signal;
    char message[256];
    bool init_mode; /* systemd is PID 1; we are its child and cannot see the exit */
} wl = {.state = ST_STARTING};

static int port_fd = -1;
static bool host_up;
static bool exit_told; /* the current host connection has been sent the exit */
static unsigned char *inbuf;
static size_t inlen;
static unsigned char *outq;
static size_t outlen, outcap;
static const char *config_dev;
static sigset_t g_mask; /* signals the agent handles via signalfd */
static struct kv cfg;   /* the instance config: exec sessions inherit its env */
static int init_pending_sig; /* init mode: a signal for systemd, held until it catches it */
static time_t init_pending_until;

/* An exec session: one host channel, one process, its stdio and credits. */
struct session {
    uint32_t ch;
    pid_t pid;
    int in_fd, out_fd, err_fd; /* tty: in_fd == out_fd == pty master, err_fd -1 */
    bool tty, in_eof, exited;
    int status;
    uint32_t credit; /* output bytes the host still accepts */
    unsigned char *pending; /* stdin bytes not yet written */
    size_t npending;
};
static struct session sessions[MAX_SESSIONS];
static int nsessions;

static void logmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ember-agent: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---------- records ---------- */

static void kv_parse(char *buf, size_t len, struct kv *kv)
{
    kv->n = 0;
    for (size_t i = 0; i < len && kv->n < 1024;) {
        char *entry = buf + i;
        size_t n = strnlen(entry, len - i);
        if (n == len - i) break; /* unterminated tail: ignore */
        char *eq = memchr(entry, '=', n);
        if (n > 0 && eq) {
            *eq = '\0';
            kv->keys[kv->n] = entry;
            kv->vals[kv->n++] = eq + 1;
        }
        i += n + 1;
    }
}

static const char *kv_get(const struct kv *kv, const char *key)
{
    for (int i = 0; i < kv->n; i++)
        if (!strcmp(kv->keys[i], key)) return kv->vals[i];
    return NULL;
}

/* All values of a repeated key, NULL-terminated (caller frees the array); NULL when
 * out of memory (PID 1 must not die of it: each caller refuses what it was asked). */
static char **kv_list(const struct kv *kv, const char *key)
{
    char **out = calloc((size_t)kv->n + 1, sizeof(char *));
    if (!out) return NULL;
    int j = 0;
    for (int i = 0; i < kv->n; i++)
        if (!strcmp(kv->keys[i], key)) out[j++] = kv->vals[i];
    return out;
}

/* ---------- JSON output ---------- */

static size_t json_str(char *dst, size_t cap, const char *s)
{
    size_t o = 0;
    if (cap < 3) return 0;
    dst[o++] = '"';
    for (; *s && o + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { dst[o++] = '\\'; dst[o++] = (char)c; }
        else if (c < 0x20) o += (size_t)snprintf(dst + o, cap - o, "\\u%04x", c);
        else dst[o++] = (char)c;
    }
    dst[o++] = '"';
    dst[o] = '\0';
    return o;
}

static int status_json(char *buf, size_t cap)
{
    char msg[600];
    json_str(msg, sizeof msg, wl.message);
    if (wl.state == ST_EXITED)
        return snprintf(buf, cap,
                        "{\"state\":\"exited\",\"pid\":%d,\"exit_code\":%d,\"signal\":%d,"
                        "\"message\":%s}",
                        (int)wl.pid, wl.exit_code, wl.signal, msg);
    return snprintf(buf, cap, "{\"state\":\"%s\",\"pid\":%d,\"init_mode\":%s}",
                    state_names[wl.state], (int)wl.pid, wl.init_mode ? "true" : "false");
}

/* ---------- framing ---------- */

static void send_frame(uint8_t type, uint8_t flags, uint32_t ch, const void *p, uint32_t n)
{
    if (!host_up || outlen + HDR + n > MAX_OUTQ) return; /* state is re-sent on HELLO */
    if (outlen + HDR + n > outcap) {
        size_t cap = (outlen + HDR + n) * 2;
        unsigned char *grown = realloc(outq, cap);
        if (!grown) { logmsg("out of memory: frame of %u bytes dropped", n); return; }
        outq = grown;
        outcap = cap;
    }
    unsigned char *h = outq + outlen;
    h[0] = MAGIC; h[1] = type; h[2] = flags; h[3] = 0;
    h[4] = (unsigned char)(ch >> 24); h[5] = (unsigned char)(ch >> 16);
    h[6] = (unsigned char)(ch >> 8); h[7] = (unsigned char)ch;
    h[8] = (unsigned char)(n >> 24); h[9] = (unsigned char)(n >> 16);
    h[10] = (unsigned char)(n >> 8); h[11] = (unsigned char)n;
    if (n) memcpy(h + HDR, p, n);
    outlen += HDR + n;
    if (wl.state == ST_EXITED && (type == T_EXIT || type == T_HELLO_ACK)) exit_told = true;
}

static void send_json(uint8_t type, uint32_t ch, const char *json)
{
    send_frame(type, 0, ch, json, (uint32_t)strlen(json));
}

static void send_error(uint32_t ch, const char *msg)
{
    char buf[600], s[560];
    json_str(s, sizeof s, msg);
    snprintf(buf, sizeof buf, "{\"message\":%s}", s);
    send_json(T_ERROR, ch, buf);
}

static void host_down(void)
{
    host_up = false;
    exit_told = false;
    inlen = 0;
    outlen = 0;
}

static void flush_out(void)
{
    while (port_fd >= 0 && outlen) {
        ssize_t w = write(port_fd, outq, outlen);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) host_down();
            return;
        }
        memmove(outq, outq + w, outlen - (size_t)w);
        outlen -= (size_t)w;
    }
}

/* ---------- workload ---------- */

static void describe_exit(int status)
{
    if (WIFEXITED(status)) {
        wl.exit_code = WEXITSTATUS(status);
        wl.signal = 0;
        snprintf(wl.message, sizeof wl.message, "exited with code %d", wl.exit_code);
    } else {
        wl.signal = WTERMSIG(status);
        wl.exit_code = 128 + wl.signal;
        const char *abbrev = sigabbrev_np(wl.signal);
        snprintf(wl.message, sizeof wl.message, "killed by signal %d (SIG%s)", wl.signal,
                 abbrev ? abbrev : "?");
    }
}

/* The exit record survives the VM: the host reads it from the config disk. */
static void write_exit_record(void)
{
    char rec[EXIT_REGION];
    memset(rec, 0, sizeof rec);
    char msg[600];
    json_str(msg, sizeof msg, wl.message);
    snprintf(rec, sizeof rec, "{\"exit_code\":%d,\"signal\":%d,\"message\":%s,\"time\":%lld}",
             wl.exit_code, wl.signal, msg, (long long)time(NULL));
    int fd = open(config_dev, O_WRONLY | O_CLOEXEC);
    if (fd < 0) { logmsg("cannot open %s: %s", config_dev, strerror(errno)); return; }
    if (pwrite(fd, rec, sizeof rec, 0) != (ssize_t)sizeof rec)
        logmsg("cannot write exit record: %s", strerror(errno));
    fsync(fd);
    close(fd);
}

static void workload_exited(int status)
{
    wl.state = ST_EXITED;
    describe_exit(status);
    write_exit_record();
    char buf[1024];
    status_json(buf, sizeof buf);
    send_json(T_EXIT, 0, buf);
}

struct user { uid_t uid; gid_t gid; char home[256]; char name[64]; };

/* Parse /etc/passwd ourselves: static glibc cannot load NSS modules. */
static bool find_passwd(const char *name, long uid, struct user *u)
{
    FILE *f = fopen("/etc/passwd", "re");
    if (!f) return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        char *fields[7] = {0}, *p = line;
        int n = 0;
        for (char *tok; n < 7 && (tok = strsep(&p, ":\n")); ) fields[n++] = tok;
        if (n < 6) continue;
        if ((name && !strcmp(fields[0], name)) || (!name && atol(fields[2]) == uid)) {
            u->uid = (uid_t)atol(fields[2]);
            u->gid = (gid_t)atol(fields[3]);
            snprintf(u->home, sizeof u->home, "%s", fields[5]);
            snprintf(u->name, sizeof u->name, "%s", fields[0]);
            found = true;
        }
    }
    fclose(f);
    return found;
}

static bool find_group(const char *name, gid_t *gid)
{
    FILE *f = fopen("/etc/group", "re");
    if (!f) return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        char *p = line, *gname = strsep(&p, ":"), *pw = strsep(&p, ":"), *id = strsep(&p, ":");
        (void)pw;
        if (gname && id && !strcmp(gname, name)) { *gid = (gid_t)atol(id); found = true; }
    }
    fclose(f);
    return found;
}

static int supplementary_groups(const char *user, gid_t primary, gid_t *out, int cap)
{
    int n = 0;
    out[n++] = primary;
    FILE *f = fopen("/etc/group", "re");
    if (!f || !user[0]) { if (f) fclose(f); return n; }
    char line[4096];
    while (n < cap && fgets(line, sizeof line, f)) {
        char *p = line, *gname = strsep(&p, ":"), *pw = strsep(&p, ":"), *id = strsep(&p, ":");
        (void)gname; (void)pw;
        for (char *m; id && p && (m = strsep(&p, ",\n"));)
            if (!strcmp(m, user) && (gid_t)atol(id) != primary) { out[n++] = (gid_t)atol(id); break; }
    }
    fclose(f);
    return n;
}

static bool numeric(const char *s) { return *s && strspn(s, "0123456789") == strlen(s); }

/* "user[:group]" with names or ids, as Docker accepts. Returns an error or NULL. */
static const char *resolve_user(const char *spec, struct user *u)
{
    static char err[400];
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec && *spec ? spec : "0");
    char *group = strchr(buf, ':');
    if (group) *group++ = '\0';
    memset(u, 0, sizeof *u);
    snprintf(u->home, sizeof u->home, "/");
    if (numeric(buf)) {
        /* Docker: an id without a passwd entry runs with gid 0. */
        if (!find_passwd(NULL, atol(buf), u)) u->uid = (uid_t)atol(buf);
    } else if (!find_passwd(buf, 0, u)) {
        snprintf(err, sizeof err, "unable to find user %s: no matching entries in passwd file", buf);
        return err;
    }
    if (group && *group) {
        if (numeric(group)) u->gid = (gid_t)atol(group);
        else if (!find_group(group, &u->gid)) {
            snprintf(err, sizeof err, "unable to find group %s: no matching entries in group file", group);
            return err;
        }
    }
    return NULL;
}

static bool has_env(char **env, const char *name)
{
    size_t n = strlen(name);
    for (; *env; env++)
        if (!strncmp(*env, name, n) && (*env)[n] == '=') return true;
    return false;
}

/* Build the workload environment: image/config env plus Docker's defaults. */
static char **workload_env(char **env, const struct user *u)
{
    size_t n = 0;
    while (env[n]) n++;
    char **out = calloc(n + 4, sizeof(char *));
    if (!out) return env; /* out of memory: the image's env without Docker's defaults */
    memcpy(out, env, n * sizeof(char *));
    if (!has_env(env, "PATH"))
        out[n++] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    if (!has_env(env, "HOME")) {
        char *h;
        if (asprintf(&h, "HOME=%s", u->uid == 0 && !u->name[0] ? "/root" : u->home) > 0) out[n++] = h;
    }
    if (!has_env(env, "HOSTNAME")) {
        char host[256] = "", *h;
        gethostname(host, sizeof host - 1);
        if (asprintf(&h, "HOSTNAME=%s", host) > 0) out[n++] = h;
    }
    return out;
}

static void mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') { *p = '\0'; mkdir(buf, 0755); *p = '/'; }
    mkdir(buf, 0755);
}

/* In the child: become the command or report why not through `errfd`.
 * stdio[i] < 0 keeps fd i (stdin then reads /dev/null); tty makes stdio[0] the
 * controlling terminal. */
static void __attribute__((noreturn))
exec_child(char **argv, char **env, const char *cwd, const char *user, int errfd,
           const int stdio_in[3], bool tty)
{
    sigprocmask(SIG_UNBLOCK, &g_mask, NULL);
    setsid();
    int stdio[3] = {stdio_in[0], stdio_in[1], stdio_in[2]};
    if (stdio[0] < 0) stdio[0] = open("/dev/null", O_RDONLY);
    if (tty) ioctl(stdio[0], TIOCSCTTY, 0);
    for (int i = 0; i < 3; i++)
        if (stdio[i] >= 0 && stdio[i] != i) dup2(stdio[i], i);
    struct user u;
    const char *err = resolve_user(user, &u);
    char msg[300];
    int code = 126;
    if (!err) {
        mkdir_p(cwd);
        gid_t groups[64];
        int ng = supplementary_groups(u.name, u.gid, groups, 64);
        char **envp = workload_env(env, &u);
        if (chdir(cwd) < 0) err = "cannot change to working directory";
        else if (setgroups((size_t)ng, groups) < 0 || setgid(u.gid) < 0 || setuid(u.uid) < 0)
            err = "cannot switch user";
        else {
            environ = envp; /* execvp searches the workload's PATH, not ours */
            execvp(argv[0], argv);
            int e = errno;
            if (e == ENOENT) { code = 127; snprintf(msg, sizeof msg, "command not found: %s", argv[0]); }
            else if (e == EACCES || e == EPERM) snprintf(msg, sizeof msg, "permission denied: %s", argv[0]);
            else snprintf(msg, sizeof msg, "cannot execute %s: %s", argv[0], strerror(e));
            err = msg;
        }
    }
    char out[sizeof msg + 8];
    int n = snprintf(out, sizeof out, "%d %s", code, err);
    if (write(errfd, out, (size_t)n) < 0) _exit(code);
    _exit(code);
}

/* Fork+exec with a close-on-exec pipe: EOF means exec succeeded. */
/* The workload could not be started: it "exited" with `code` and why. */
static void workload_not_started(int code, const char *what)
{
    wl.state = ST_EXITED; wl.exit_code = code; wl.signal = 0;
    snprintf(wl.message, sizeof wl.message, "%s", what);
    write_exit_record();
}

static void start_workload(struct kv *cfg)
{
    char **argv = kv_list(cfg, "arg"), **env = kv_list(cfg, "env");
    const char *cwd = kv_get(cfg, "cwd"), *user = kv_get(cfg, "user");
    char why[200];
    int pfd[2];
    if (!cwd || !*cwd) cwd = "/";
    if (!argv || !env) { workload_not_started(126, "cannot start the workload: out of memory"); goto out; }
    if (!argv[0]) { workload_not_started(127, "no command specified"); goto out; }
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        snprintf(why, sizeof why, "cannot start the workload: pipe: %s", strerror(errno));
        workload_not_started(126, why);
        goto out;
    }
    pid_t pid = fork();
    if (pid < 0) { /* wl.pid stays 0: never kill(-1, ...) or our own group later */
        snprintf(why, sizeof why, "cannot start the workload: fork: %s", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        workload_not_started(126, why);
        goto out;
    }
    if (pid == 0) {
        close(pfd[0]);
        exec_child(argv, env, cwd, user, pfd[1], (int[3]){-1, -1, -1}, false);
    }
    close(pfd[1]);
    wl.pid = pid;
    char buf[400];
    ssize_t n;
    do n = read(pfd[0], buf, sizeof buf - 1); while (n < 0 && errno == EINTR);
    close(pfd[0]);
    if (n > 0) {
        buf[n] = '\0';
        char *sp = strchr(buf, ' ');
        int status;
        waitpid(pid, &status, 0);
        wl.state = ST_EXITED; wl.exit_code = atoi(buf); wl.signal = 0;
        snprintf(wl.message, sizeof wl.message, "%s", sp ? sp + 1 : "cannot execute");
        write_exit_record();
        goto out;
    }
    wl.state = ST_RUNNING;
out: /* the workload's env strings live in the config buffer; the arrays are ours */
    free(argv);
    free(env);
}

/* ---------- exec sessions ---------- */

static struct session *find_session(uint32_t ch)
{
    for (int i = 0; i < nsessions; i++)
        if (sessions[i].ch == ch) return &sessions[i];
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static void drop_session(struct session *s)
{
    if (s->in_fd >= 0 && s->in_fd != s->out_fd) close(s->in_fd);
    close_fd(&s->out_fd);
    close_fd(&s->err_fd);
    free(s->pending);
    *s = sessions[--nsessions];
}

/* Session env: the instance's env, overridden by the request's. */
static char **session_env(char **extra)
{
    char **base = kv_list(&cfg, "env");
    if (!base) return NULL;
    size_t nb = 0, ne = 0;
    while (base[nb]) nb++;
    while (extra[ne]) ne++;
    char **out = calloc(nb + ne + 1, sizeof(char *));
    if (!out) { free(base); return NULL; }
    size_t n = 0;
    for (size_t i = 0; i < nb; i++) {
        size_t klen = strcspn(base[i], "=");
        bool overridden = false;
        for (size_t j = 0; j < ne && !overridden; j++)
            overridden = !strncmp(extra[j], base[i], klen + 1);
        if (!overridden) out[n++] = base[i];
    }
    for (size_t j = 0; j < ne; j++) out[n++] = extra[j];
    free(base);
    return out;
}

static void set_winsize(int fd, struct kv *req)
{
    const char *rows = kv_get(req, "rows"), *cols = kv_get(req, "cols");
    struct winsize ws = {.ws_row = (unsigned short)(rows ? atoi(rows) : 24),
                         .ws_col = (unsigned short)(cols ? atoi(cols) : 80)};
    ioctl(fd, TIOCSWINSZ, &ws);
}

/* Close each distinct fd of a session being set up (a pty's three are one). */
static void close_fds(int fds[3])
{
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0) continue;
        for (int j = i + 1; j < 3; j++)
            if (fds[j] == fds[i]) fds[j] = -1;
        close_fd(&fds[i]);
    }
}

static void exec_start(uint32_t ch, struct kv *req)
{
    char **argv = kv_list(req, "arg"), **extra = kv_list(req, "env"), **env = NULL;
    const char *cwd = kv_get(req, "cwd"), *user = kv_get(req, "user"), *tty = kv_get(req, "tty");
    bool use_tty = tty && !strcmp(tty, "1");
    int child[3] = {-1, -1, -1}, parent[3] = {-1, -1, -1}, pfd[2];
    if (!argv || !extra) { send_error(ch, "out of memory"); goto out; }
    if (!argv[0] || find_session(ch) || nsessions == MAX_SESSIONS) {
        send_error(ch, !argv[0] ? "no command" : "channel busy or too many sessions");
        goto out;
    }
    if (!cwd || !*cwd) cwd = kv_get(&cfg, "cwd");
    if (!user) user = kv_get(&cfg, "user");
    if (use_tty) {
        int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) {
            send_error(ch, "cannot allocate a pty");
            if (master >= 0) close(master);
            goto out;
        }
        set_winsize(master, req);
        parent[0] = parent[1] = master;
        const char *name = ptsname(master);
        int slave = name ? open(name, O_RDWR | O_NOCTTY | O_CLOEXEC) : -1;
        if (slave < 0) { send_error(ch, "cannot open the pty"); goto fail; }
        child[0] = child[1] = child[2] = slave;
    } else {
        for (int i = 0; i < 3; i++) {
            int p[2];
            if (pipe2(p, O_CLOEXEC) < 0) { send_error(ch, strerror(errno)); goto fail; }
            child[i] = i == 0 ? p[0] : p[1];
            parent[i] = i == 0 ? p[1] : p[0];
        }
    }
    env = session_env(extra);
    if (!env) { send_error(ch, "out of memory"); goto fail; }
    if (pipe2(pfd, O_CLOEXEC) < 0) { send_error(ch, strerror(errno)); goto fail; }
    pid_t pid = fork();
    if (pid < 0) {
        send_error(ch, strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        goto fail;
    }
    if (pid == 0) {
        close(pfd[0]);
        exec_child(argv, env, cwd && *cwd ? cwd : "/", user, pfd[1], child, use_tty);
    }
    close(pfd[1]);
    close_fds(child);
    struct session *s = &sessions[nsessions++];
    *s = (struct session){.ch = ch, .pid = pid, .in_fd = parent[0], .out_fd = parent[1],
                          .err_fd = parent[2], .tty = use_tty, .credit = WINDOW};
    for (int i = 0; i < 3; i++)
        if (parent[i] >= 0) fcntl(parent[i], F_SETFL, O_NONBLOCK);
    char buf[400];
    ssize_t n;
    do n = read(pfd[0], buf, sizeof buf - 1); while (n < 0 && errno == EINTR);
    close(pfd[0]);
    if (n > 0) { /* exec failed: the child reported "code message" and exits */
        buf[n] = '\0';
        char *sp = strchr(buf, ' '), js[600], out[700];
        json_str(js, sizeof js, sp ? sp + 1 : "cannot execute");
        snprintf(out, sizeof out, "{\"exit_code\":%d,\"signal\":0,\"message\":%s}", atoi(buf), js);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        send_json(T_EXEC_EXIT, ch, out);
        drop_session(s);
        goto out;
    }
    snprintf(buf, sizeof buf, "{\"pid\":%d}", (int)pid);
    send_json(T_EXEC_STARTED, ch, buf);
    goto out;
fail: /* nothing of the session is left open */
    close_fds(child);
    close_fds(parent);
out:
    free(env);
    free(argv);
    free(extra);
}

static void session_write_stdin(struct session *s)
{
    while (s->npending && s->in_fd >= 0) {
        ssize_t w = write(s->in_fd, s->pending, s->npending);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) s->npending = 0; /* reader gone: discard */
            break;
        }
        memmove(s->pending, s->pending + w, s->npending - (size_t)w);
        s->npending -= (size_t)w;
        char grant[32];
        int k = snprintf(grant, sizeof grant, "credit=%zd", w);
        send_frame(T_CREDIT, 0, s->ch, grant, (uint32_t)k + 1);
    }
    if (!s->npending && s->in_eof && s->in_fd >= 0 && !s->tty) close_fd(&s->in_fd);
}

static void session_stdin(struct session *s, uint8_t flags, unsigned char *p, uint32_t n)
{
    bool eot = (flags & F_EOF) && s->tty && s->in_fd >= 0; /* a terminal's EOF is ^D */
    if (n || eot) {
        unsigned char *grown = realloc(s->pending, s->npending + n + eot);
        if (!grown) { send_error(s->ch, "out of memory: stdin dropped"); n = 0; eot = false; }
        else s->pending = grown;
    }
    if (n) {
        memcpy(s->pending + s->npending, p, n);
        s->npending += n;
    }
    if (flags & F_EOF) s->in_eof = true;
    if (eot) s->pending[s->npending++] = 4;
    session_write_stdin(s);
}

/* Forward up to `credit` bytes of output; EOF (or EIO on a pty) closes the fd. */
static void session_read(struct session *s, int *fd, uint8_t type)
{
    unsigned char buf[CHUNK];
    while (*fd >= 0 && s->credit > 0 && outlen < MAX_OUTQ / 2) {
        size_t want = s->credit < sizeof buf ? s->credit : sizeof buf;
        ssize_t r = read(*fd, buf, want);
        if (r > 0) {
            send_frame(type, 0, s->ch, buf, (uint32_t)r);
            s->credit -= (uint32_t)r;
            continue;
        }
        if (r < 0 && (errno == EINTR)) continue;
        if (r < 0 && errno == EAGAIN) return;
        if (s->tty && *fd == s->in_fd) s->in_fd = -1;
        close_fd(fd);
    }
}

/* A session ends once its process exited and its output is drained. */
static void session_finish(struct session *s)
{
    if (!s->exited || s->out_fd >= 0 || s->err_fd >= 0) return;
    char js[300], out[400];
    int code, sig = 0;
    char msg[200];
    if (WIFEXITED(s->status)) {
        code = WEXITSTATUS(s->status);
        snprintf(msg, sizeof msg, "exited with code %d", code);
    } else {
        sig = WTERMSIG(s->status);
        code = 128 + sig;
        const char *abbrev = sigabbrev_np(sig);
        snprintf(msg, sizeof msg, "killed by signal %d (SIG%s)", sig, abbrev ? abbrev : "?");
    }
    json_str(js, sizeof js, msg);
    snprintf(out, sizeof out, "{\"exit_code\":%d,\"signal\":%d,\"message\":%s}", code, sig, js);
    send_json(T_EXEC_EXIT, s->ch, out);
    drop_session(s);
}

static void kill_sessions(void)
{
    while (nsessions) {
        if (!sessions[0].exited) kill(-sessions[0].pid, SIGKILL);
        drop_session(&sessions[0]);
    }
}

static void stat_path(uint32_t ch, struct kv *req)
{
    const char *path = kv_get(req, "path"), *follow = kv_get(req, "follow");
    struct stat st;
    int r = !path ? -1 : follow && !strcmp(follow, "1") ? stat(path, &st) : lstat(path, &st);
    if (r < 0) {
        char js[600], out[700];
        json_str(js, sizeof js, path ? strerror(errno) : "no path");
        snprintf(out, sizeof out, "{\"message\":%s,\"errno\":%d}", js, path ? errno : EINVAL);
        send_json(T_ERROR, ch, out);
        return;
    }
    char target[4096] = "", js[8300], out[8600];
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = '\0';
    }
    json_str(js, sizeof js, target);
    snprintf(out, sizeof out,
             "{\"mode\":%u,\"size\":%lld,\"uid\":%u,\"gid\":%u,\"mtime\":%lld,\"link_target\":%s}",
             st.st_mode, (long long)st.st_size, st.st_uid, st.st_gid, (long long)st.st_mtime, js);
    send_json(T_STAT, ch, out);
}

/* ---------- host requests ---------- */

/* Whether PID 1 takes `sig`: blocks it (systemd reads signals from a
 * signalfd) or has a handler (SigBlk, SigCgt in /proc/1/status). */
static bool pid1_takes(int sig)
{
    char line[256];
    unsigned long long mask = 0;
    FILE *f = fopen("/proc/1/status", "re");
    if (!f) return false;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "SigBlk:", 7) || !strncmp(line, "SigCgt:", 7))
            mask |= strtoull(line + 7, NULL, 16);
    fclose(f);
    return (mask >> (sig - 1)) & 1;
}

/* The kernel drops signals to PID 1 that it neither blocks nor handles: a stop
 * that arrives while systemd is still starting would be lost. So the signal
 * waits (the main loop retries every 100 ms) until systemd takes it. */
static void deliver_init_signal(void)
{
    if (!init_pending_sig) return;
    if (pid1_takes(init_pending_sig)) kill(1, init_pending_sig);
    else if (time(NULL) < init_pending_until) return;
    else logmsg("systemd does not handle signal %d: dropped", init_pending_sig);
    init_pending_sig = 0;
}

static void handle_signal_req(uint32_t ch, struct kv *req)
{
    const char *s = kv_get(req, "signal");
    int sig = s ? atoi(s) : 0;
    if (sig <= 0 || sig >= 65) { send_error(ch, "missing or invalid signal"); return; }
    const char *target = kv_get(req, "channel");
    if (target) { /* to an exec session's process group */
        struct session *s = find_session((uint32_t)strtoul(target, NULL, 10));
        if (!s || s->exited) send_error(ch, "no such running session");
        else if (kill(-s->pid, sig) < 0) send_error(ch, strerror(errno));
        else send_json(T_STATUS, ch, "{}");
        return;
    }
    if (wl.state != ST_RUNNING) { send_error(ch, "workload is not running"); return; }
    if (wl.init_mode && kv_get(req, "group")) { send_error(ch, "systemd: no group signals"); return; }
    if (wl.init_mode) {
        /* systemd powers off on SIGRTMIN+4; SIGTERM would make it re-execute. */
        if (sig == SIGTERM) sig = SIGRTMIN + 4;
        init_pending_sig = sig;
        init_pending_until = time(NULL) + 300;
        deliver_init_signal();
    } else if (wl.pid <= 0 || kill(kv_get(req, "group") ? -wl.pid : wl.pid, sig) < 0) {
        /* group=1: the workload's whole process group (its session: setsid at start) */
        send_error(ch, strerror(errno));
        return;
    }
    char buf[1024];
    status_json(buf, sizeof buf);
    send_json(T_STATUS, ch, buf);
}

/* After a restore the guest's wall clock lags by the time it spent saved: the host
 * sends its own time (sec=, nsec=) and the guest takes it. */
static void set_time(uint32_t ch, struct kv *req)
{
    const char *sec = kv_get(req, "sec"), *nsec = kv_get(req, "nsec");
    if (!sec) { send_error(ch, "missing sec"); return; }
    struct timespec ts = {.tv_sec = (time_t)strtoll(sec, NULL, 10),
                          .tv_nsec = nsec ? strtol(nsec, NULL, 10) : 0};
    if (clock_settime(CLOCK_REALTIME, &ts) < 0) { send_error(ch, strerror(errno)); return; }
    send_json(T_STATUS, ch, "{}");
}

/* A fork restored from another VM's memory still holds that VM's MAC, address and name:
 * the host sends the fork's own (mac= ip= prefix= gateway= dns=... hostname= iface=) and
 * the agent applies them with ioctls, so images without `ip` work too. The MAC goes first
 * (virtio-net passes it to the device, whose receive filter must match), then the
 * address (replacing the old one drops the routes through it), then the default route. */
static int set_sockaddr(struct sockaddr *sa, const char *text)
{
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    memset(in, 0, sizeof *in);
    in->sin_family = AF_INET;
    return inet_pton(AF_INET, text, &in->sin_addr) == 1 ? 0 : -1;
}

static const char *apply_network(struct kv *req)
{
    static char err[256];
    const char *dev = kv_get(req, "iface"), *mac = kv_get(req, "mac"), *ip = kv_get(req, "ip");
    const char *prefix = kv_get(req, "prefix"), *gw = kv_get(req, "gateway");
    const char *host = kv_get(req, "hostname");
    if (!dev) dev = "eth0";
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return strerror(errno);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", dev);
    const char *what = NULL;
    if (mac) {
        unsigned int b[6];
        if (sscanf(mac, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6) {
            what = "invalid mac";
            goto out;
        }
        ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
        for (int i = 0; i < 6; i++) ifr.ifr_hwaddr.sa_data[i] = (char)b[i];
        if (ioctl(fd, SIOCSIFHWADDR, &ifr) < 0) { what = "set mac"; goto fail; }
    }
    if (ip) {
        int bits = prefix ? atoi(prefix) : 24;
        if (bits < 0 || bits > 32 || set_sockaddr(&ifr.ifr_addr, ip) < 0) {
            what = "invalid ip or prefix";
            goto out;
        }
        if (ioctl(fd, SIOCSIFADDR, &ifr) < 0) { what = "set address"; goto fail; }
        struct sockaddr_in *mask = (struct sockaddr_in *)&ifr.ifr_netmask;
        memset(mask, 0, sizeof *mask);
        mask->sin_family = AF_INET;
        mask->sin_addr.s_addr = htonl(bits ? 0xffffffffu << (32 - bits) : 0);
        if (ioctl(fd, SIOCSIFNETMASK, &ifr) < 0) { what = "set netmask"; goto fail; }
        if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) { what = "get flags"; goto fail; }
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) { what = "set up"; goto fail; }
    }
    if (gw) {
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        set_sockaddr(&rt.rt_dst, "0.0.0.0");
        set_sockaddr(&rt.rt_genmask, "0.0.0.0");
        if (set_sockaddr(&rt.rt_gateway, gw) < 0) { what = "invalid gateway"; goto out; }
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = (char *)dev;
        if (ioctl(fd, SIOCADDRT, &rt) < 0 && errno != EEXIST) { what = "add default route"; goto fail; }
    }
    char **dns = kv_list(req, "dns");
    if (!dns) { what = "out of memory"; goto out; }
    if (dns[0]) {
        FILE *f = fopen("/etc/resolv.conf.ember", "w");
        if (f) {
            for (int i = 0; dns[i]; i++) fprintf(f, "nameserver %s\n", dns[i]);
            fclose(f);
            if (rename("/etc/resolv.conf.ember", "/etc/resolv.conf") < 0) unlink("/etc/resolv.conf.ember");
        }
    }
    free(dns);
    if (host && sethostname(host, strlen(host)) < 0) { what = "set hostname"; goto fail; }
    close(fd);
    return NULL;
fail:
    snprintf(err, sizeof err, "%s: %s", what, strerror(errno));
    close(fd);
    return err;
out:
    close(fd);
    return what;
}

/* Gratuitous ARP at boot: tell the link eth0's address is at eth0's MAC, so a neighbour
 * cache (the host's) that still maps the address to another VM's MAC (a deleted VM's,
 * whose address this one got) is corrected now rather than after its entry goes stale
 * (~40 s measured). After a restore QEMU has the guest announce itself (virtio-net
 * GUEST_ANNOUNCE); a fork's TAP is down at its SET_NETWORK, so there the host forgets its
 * entry as the TAP comes up. Best effort: no address or no eth0 is no error. */
static void announce_address(const char *dev)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", dev);
    int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP));
    if (fd < 0) return;
    struct {
        struct arphdr h;
        unsigned char sha[6], spa[4], tha[6], tpa[4];
    } __attribute__((packed)) arp = {
        .h = {.ar_hrd = htons(ARPHRD_ETHER), .ar_pro = htons(ETH_P_IP), .ar_hln = 6,
              .ar_pln = 4, .ar_op = htons(ARPOP_REQUEST)},
    };
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ARP),
                             .sll_halen = 6, .sll_addr = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}};
    if (ioctl(fd, SIOCGIFINDEX, &ifr) == 0 && (to.sll_ifindex = ifr.ifr_ifindex) > 0 &&
        ioctl(fd, SIOCGIFHWADDR, &ifr) == 0) {
        memcpy(arp.sha, ifr.ifr_hwaddr.sa_data, 6);
        if (ioctl(fd, SIOCGIFADDR, &ifr) == 0) {
            memcpy(arp.spa, &((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr, 4);
            memcpy(arp.tpa, arp.spa, 4); /* sender = target: gratuitous */
            sendto(fd, &arp, sizeof arp, 0, (struct sockaddr *)&to, sizeof to);
        }
    }
    close(fd);
}

static void set_network(uint32_t ch, struct kv *req)
{
    const char *why = apply_network(req);
    if (why) send_error(ch, why);
    else send_json(T_STATUS, ch, "{}");
}

/* A clone or fork resumes with the random state, machine-id and hostname of the VM it was
 * saved from. The host sends fresh entropy (entropy=<hex>, credited), a machine_id= and a
 * hostname=: the entropy is mixed in and the CRNG reseeded at once (RNDRESEEDCRNG), so
 * no two clones draw the same numbers from here on; with cont=1 the workload's process
 * group, stopped before the save, goes on after that. */
static int unhex(const char *text, unsigned char *out, size_t max)
{
    size_t n = strlen(text);
    if (n % 2 || n / 2 > max) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned int byte;
        if (sscanf(text + 2 * i, "%2x", &byte) != 1) return -1;
        out[i] = (unsigned char)byte;
    }
    return (int)(n / 2);
}

static const char *reseed(const char *hex)
{
    struct { int entropy_count; int buf_size; unsigned char buf[256]; } pool;
    int n = unhex(hex, pool.buf, sizeof pool.buf);
    if (n <= 0) return "invalid entropy";
    pool.buf_size = n;
    pool.entropy_count = n * 8;
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return "open /dev/urandom";
    const char *what = NULL;
    if (ioctl(fd, RNDADDENTROPY, &pool) < 0) what = "RNDADDENTROPY";
    else if (ioctl(fd, RNDRESEEDCRNG) < 0) what = "RNDRESEEDCRNG";
    close(fd);
    return what;
}

static const char *write_machine_id(const char *id)
{
    if (strlen(id) != 32 || strspn(id, "0123456789abcdef") != 32) return "invalid machine_id";
    struct stat st;
    if (stat("/etc", &st) < 0 || !S_ISDIR(st.st_mode)) return NULL; /* no /etc: nothing to own */
    FILE *f = fopen("/etc/machine-id.ember", "w");
    if (!f) return "write /etc/machine-id";
    fprintf(f, "%s\n", id);
    if (fclose(f) != 0 || rename("/etc/machine-id.ember", "/etc/machine-id") < 0) {
        unlink("/etc/machine-id.ember");
        return "write /etc/machine-id";
    }
    return NULL;
}

static void set_identity(uint32_t ch, struct kv *req)
{
    static char err[256];
    const char *entropy = kv_get(req, "entropy"), *id = kv_get(req, "machine_id");
    const char *host = kv_get(req, "hostname"), *what = NULL;
    if (entropy) what = reseed(entropy);
    if (!what && id) what = write_machine_id(id);
    if (!what && host && sethostname(host, strlen(host)) < 0) what = "set hostname";
    /* cont=1: the workload was stopped before the save (a template): it goes on only now,
     * reseeded, so it never draws from the state every clone shares. */
    if (!what && kv_get(req, "cont") && !wl.init_mode && wl.pid > 0 && kill(-wl.pid, SIGCONT) < 0)
        what = "continue the workload";
    if (what) {
        snprintf(err, sizeof err, "%s: %s", what, errno ? strerror(errno) : "bad request");
        send_error(ch, err);
        return;
    }
    send_json(T_STATUS, ch, "{}");
}

/* ---------- volumes attached to a running VM ---------- */

/* The host swapped a volume into the slot disk `serial` and resized it: find it as
 * /dev/vdX and wait (up to 10 s) until the guest kernel has seen the new capacity. */
static const char *volume_device(const char *serial, char *dev, size_t len)
{
    for (int tries = 0; tries < 500; tries++) {
        DIR *d = opendir("/sys/block");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char path[300], got[128] = "", size[32] = "0";
            snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
            FILE *f = fopen(path, "re");
            if (!f) continue;
            bool match = fgets(got, sizeof got, f) && !strncmp(got, serial, strlen(serial))
                         && (got[strlen(serial)] == '\0' || got[strlen(serial)] == '\n');
            fclose(f);
            snprintf(path, sizeof path, "/sys/block/%s/size", e->d_name);
            if (match && (f = fopen(path, "re"))) {
                if (!fgets(size, sizeof size, f)) size[0] = '0';
                fclose(f);
            }
            if (match && atoll(size) > 0) {
                snprintf(dev, len, "/dev/%s", e->d_name);
                closedir(d);
                return NULL;
            }
        }
        if (d) closedir(d);
        usleep(20000);
    }
    return "the disk did not appear in the guest (no capacity after 10 s)";
}

static void mount_volume(uint32_t ch, struct kv *req)
{
    const char *serial = kv_get(req, "serial"), *path = kv_get(req, "path");
    const char *ro = kv_get(req, "ro");
    bool readonly = ro && !strcmp(ro, "1");
    char dev[300], out[700], js[600];
    if (!serial || !path || path[0] != '/') { send_error(ch, "missing serial or path"); return; }
    const char *why = volume_device(serial, dev, sizeof dev);
    if (!why) {
        /* The slot may have held another volume: drop whatever of it the cache kept. */
        int fd = open(dev, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) { ioctl(fd, BLKFLSBUF, 0); close(fd); }
        mkdir_p(path);
        /* Read-only: noload, a shared volume's journal is never replayed (as init). */
        if (mount(dev, path, "ext4", readonly ? MS_RDONLY : 0, readonly ? "noload" : "") < 0)
            why = strerror(errno);
    }
    if (!why) { send_json(T_STATUS, ch, "{}"); return; }
    snprintf(out, sizeof out, "mount %s at %s: %s", serial, path, why);
    json_str(js, sizeof js, out);
    snprintf(out, sizeof out, "{\"message\":%s}", js);
    send_json(T_ERROR, ch, out);
}

/* Never lazy (MNT_DETACH): a volume still in use stays mounted and the host keeps it
 * attached, saying why (EBUSY). */
static void unmount_volume(uint32_t ch, struct kv *req)
{
    const char *path = kv_get(req, "path");
    if (!path) { send_error(ch, "missing path"); return; }
    sync();
    if (umount2(path, 0) < 0 && errno != EINVAL) { /* EINVAL: not mounted (any more) */
        char js[600], out[700];
        snprintf(out, sizeof out, "unmount %s: %s", path, strerror(errno));
        json_str(js, sizeof js, out);
        snprintf(out, sizeof out, "{\"message\":%s,\"errno\":%d}", js, errno);
        send_json(T_ERROR, ch, out);
        return;
    }
    send_json(T_STATUS, ch, "{}");
}

static void handle_frame(uint8_t type, uint8_t flags, uint32_t ch, unsigned char *p, uint32_t n)
{
    char buf[2048];
    struct kv req;
    switch (type) {
    case T_HELLO: {
        /* A (re)connected host: forget the old connection's data and sessions. */
        outlen = 0;
        kill_sessions();
        char nonce[64] = "";
        snprintf(nonce, sizeof nonce, "%.*s", (int)(n < 63 ? n : 63), (char *)p);
        int k = snprintf(buf, sizeof buf, "{\"nonce\":");
        k += (int)json_str(buf + k, sizeof buf - (size_t)k, nonce);
        k += snprintf(buf + k, sizeof buf - (size_t)k, ",\"version\":1,\"status\":");
        k += status_json(buf + k, sizeof buf - (size_t)k);
        snprintf(buf + k, sizeof buf - (size_t)k, "}");
        send_json(T_HELLO_ACK, ch, buf);
        break;
    }
    case T_STATUS:
        status_json(buf, sizeof buf);
        send_json(T_STATUS, ch, buf);
        break;
    case T_PING:
        send_frame(T_PONG, 0, ch, p, n);
        break;
    case T_SIGNAL:
        kv_parse((char *)p, n, &req);
        handle_signal_req(ch, &req);
        break;
    case T_SET_TIME:
        kv_parse((char *)p, n, &req);
        set_time(ch, &req);
        break;
    case T_SET_NETWORK:
        kv_parse((char *)p, n, &req);
        set_network(ch, &req);
        break;
    case T_SET_IDENTITY:
        kv_parse((char *)p, n, &req);
        set_identity(ch, &req);
        break;
    case T_EXEC_START:
        kv_parse((char *)p, n, &req);
        exec_start(ch, &req);
        break;
    case T_MOUNT:
        kv_parse((char *)p, n, &req);
        mount_volume(ch, &req);
        break;
    case T_UNMOUNT:
        kv_parse((char *)p, n, &req);
        unmount_volume(ch, &req);
        break;
    case T_STAT:
        kv_parse((char *)p, n, &req);
        stat_path(ch, &req);
        break;
    case T_STDIN:
    case T_RESIZE:
    case T_CREDIT: {
        struct session *s = find_session(ch);
        if (!s) break; /* the session ended meanwhile */
        if (type == T_STDIN) { session_stdin(s, flags, p, n); break; }
        kv_parse((char *)p, n, &req);
        if (type == T_RESIZE && s->tty) set_winsize(s->in_fd, &req);
        const char *c = kv_get(&req, "credit");
        if (type == T_CREDIT && c) s->credit += (uint32_t)strtoul(c, NULL, 10);
        break;
    }
    default:
        snprintf(buf, sizeof buf, "unknown message type %u", type);
        send_error(ch, buf);
    }
}

struct frame {
    uint8_t type, flags;
    uint32_t ch, n;
    unsigned char *p; /* the payload, inside the buffer; NULL: no complete frame */
};

/* The first complete frame in buf[0..len), resynchronising on the magic byte after
 * garbage. Returns the bytes it and the garbage before it take; with f->p NULL, the
 * garbage that can be dropped while the rest waits for more input. Pure: the fuzz
 * harness (tests/guest/agent_fuzz.c) runs it under ASan/UBSan. */
static size_t next_frame(unsigned char *buf, size_t len, struct frame *f)
{
    size_t off = 0;
    f->p = NULL;
    while (len - off >= HDR) {
        unsigned char *h = buf + off;
        if (h[0] != MAGIC) { off++; continue; }
        uint32_t n = (uint32_t)h[8] << 24 | (uint32_t)h[9] << 16 | (uint32_t)h[10] << 8 | h[11];
        if (n > MAX_PAYLOAD) { off++; continue; }
        if (len - off < HDR + n) break;
        f->type = h[1];
        f->flags = h[2];
        f->ch = (uint32_t)h[4] << 24 | (uint32_t)h[5] << 16 | (uint32_t)h[6] << 8 | h[7];
        f->n = n;
        f->p = h + HDR;
        return off + HDR + n;
    }
    return off;
}

/* Consume complete frames. */
static void parse_input(void)
{
    size_t off = 0;
    struct frame f;
    do {
        off += next_frame(inbuf + off, inlen - off, &f);
        if (f.p) handle_frame(f.type, f.flags, f.ch, f.p, f.n);
    } while (f.p);
    memmove(inbuf, inbuf + off, inlen - off);
    inlen -= off;
}

static void read_port(void)
{
    for (;;) {
        if (inlen == HDR + MAX_PAYLOAD) inlen = 0; /* cannot happen with valid frames */
        ssize_t r = read(port_fd, inbuf + inlen, HDR + MAX_PAYLOAD - inlen);
        if (r > 0) { host_up = true; inlen += (size_t)r; parse_input(); continue; }
        if (r == 0) host_down(); /* virtio_console: EOF while no host is attached */
        else if (errno == EINTR) continue;
        return;
    }
}

static void open_port(void)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        char path[300], name[64] = "";
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        FILE *f = fopen(path, "re");
        if (!f) continue;
        if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = '\0';
        fclose(f);
        if (strcmp(name, PORT_NAME)) continue;
        snprintf(path, sizeof path, "/dev/%s", e->d_name);
        port_fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (port_fd < 0) logmsg("cannot open %s: %s", path, strerror(errno));
        break;
    }
    closedir(d);
}

/* ---------- main loop ---------- */

static void reap(void)
{
    int status;
    for (pid_t pid; (pid = waitpid(-1, &status, WNOHANG)) > 0;) {
        if (pid == wl.pid && wl.state == ST_RUNNING) workload_exited(status);
        for (int i = 0; i < nsessions; i++)
            if (sessions[i].pid == pid) { sessions[i].exited = true; sessions[i].status = status; }
    }
}

/* Give an attached host up to a second to hear about the exit: it may have
 * connected but not yet said HELLO (a workload that failed at once). */
static void tell_host_exit(void)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (exit_told && !outlen) break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (port_fd < 0 || (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 > 1000)
            break;
        struct pollfd pfd = {.fd = port_fd, .events = POLLIN | (outlen ? POLLOUT : 0)};
        if (poll(&pfd, 1, 50) > 0) {
            if (pfd.revents & POLLHUP) break; /* nobody attached: the exit record will do */
            if (pfd.revents & POLLIN) read_port();
        }
        flush_out();
    }
}

static void __attribute__((noreturn)) power_off(void)
{
    tell_host_exit();
    kill(-1, SIGKILL);
    sync();
    reboot(RB_POWER_OFF);
    _exit(1);
}

/* systemd-shutdown's verb ("poweroff", "reboot", ...) once it has replaced
 * systemd as PID 1, else false. */
static bool shutdown_verb(char *verb, size_t cap)
{
    char cmdline[512];
    int fd = open("/proc/1/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    close(fd);
    if (n <= 0) return false;
    cmdline[n] = '\0';
    const char *name = strrchr(cmdline, '/');
    if (strcmp(name ? name + 1 : cmdline, "systemd-shutdown")) return false;
    size_t len = strlen(cmdline);
    snprintf(verb, cap, "%s", (ssize_t)len + 1 < n ? cmdline + len + 1 : "shutdown");
    return true;
}

/* Init mode: we are systemd's child and forward nothing to it (SIGTERM would
 * make it re-execute itself). The SIGTERM that systemd-shutdown sends every
 * remaining process is our cue: record how the system ends, tell the host and
 * get out of the way (it would otherwise wait ~90 s for us). */
static void init_mode_signal(int sig)
{
    char verb[64];
    if ((sig != SIGTERM && sig != SIGINT && sig != SIGHUP) || !shutdown_verb(verb, sizeof verb))
        return;
    wl.state = ST_EXITED;
    wl.exit_code = 0;
    wl.signal = 0;
    snprintf(wl.message, sizeof wl.message, "systemd shut the system down (%s)", verb);
    write_exit_record();
    char buf[1024];
    status_json(buf, sizeof buf);
    send_json(T_EXIT, 0, buf);
    kill_sessions();
    tell_host_exit();
    _exit(0);
}

static void handle_signals(int sfd)
{
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGCHLD) reap();
        else if (wl.init_mode) init_mode_signal((int)si.ssi_signo);
        else if (wl.state == ST_RUNNING && wl.pid > 0) kill(wl.pid, (int)si.ssi_signo); /* forward */
    }
}

static void loop(int sfd)
{
    for (;;) {
        if (wl.state == ST_EXITED && !wl.init_mode && getpid() == 1) power_off();
        struct pollfd fds[2 + 2 * MAX_SESSIONS] = {{.fd = sfd, .events = POLLIN}, {.fd = -1}};
        int nfds = 2;
        for (int i = 0; i < nsessions; i++) {
            struct session *s = &sessions[i];
            /* Without credit, leave output fds out: their HUP would spin the loop. */
            fds[nfds++] = (struct pollfd){.fd = s->credit ? s->out_fd : -1, .events = POLLIN};
            fds[nfds++] = (struct pollfd){.fd = s->credit ? s->err_fd : -1, .events = POLLIN};
            if (s->npending && s->in_fd >= 0 && s->in_fd != s->out_fd)
                fds[nfds - 1] = (struct pollfd){.fd = s->in_fd, .events = POLLOUT};
        }
        deliver_init_signal();
        int timeout = init_pending_sig ? 100 : -1;
        if (port_fd >= 0) {
            /* While no host is attached the port polls HUP forever: probe slowly. */
            struct pollfd probe = {.fd = port_fd, .events = POLLIN};
            if (!host_up && poll(&probe, 1, 0) >= 0 && (probe.revents & POLLHUP))
                timeout = init_pending_sig ? 100 : 200;
            else fds[1] = (struct pollfd){.fd = port_fd, .events = POLLIN | (outlen ? POLLOUT : 0)};
        }
        if (poll(fds, (nfds_t)nfds, timeout) < 0 && errno != EINTR)
            logmsg("poll: %s", strerror(errno));
        if (fds[0].revents & POLLIN) handle_signals(sfd);
        if (fds[1].revents & POLLHUP) { host_down(); continue; }
        if (fds[1].revents & POLLIN) read_port();
        /* Sessions: cheap non-blocking attempts on every iteration. */
        for (int i = nsessions - 1; i >= 0; i--) {
            struct session *s = &sessions[i];
            session_write_stdin(s);
            session_read(s, &s->out_fd, T_STDOUT);
            session_read(s, &s->err_fd, T_STDERR);
            session_finish(s);
        }
        flush_out();
        if (fds[1].revents & POLLOUT) flush_out();
    }
}

static void noop_handler(int sig) { (void)sig; }

static bool is_init_system(const char *argv0)
{
    if (!argv0) return false;
    size_t n = strlen(argv0);
    return !strcmp(argv0, "/sbin/init") || (n >= 8 && !strcmp(argv0 + n - 8, "/systemd"));
}

static char *read_config(const char *dev, size_t *len)
{
    int fd = open(dev, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    char *buf = malloc(MAX_PAYLOAD + 1);
    if (!buf) { close(fd); return NULL; }
    ssize_t n = pread(fd, buf, MAX_PAYLOAD, CONFIG_OFFSET);
    close(fd);
    *len = n > 0 ? (size_t)n : 0;
    return buf;
}

/* ---------- copy: `agent cp-out PATH FOLLOW` and `agent cp-in PATH MODE UID GID ISDIR` ----------
 * The host runs these as exec sessions, so copies ride the exec channel and its
 * credit-based flow control instead of needing a protocol of their own.
 * cp-out writes, for each entry of the tree (parents first), one JSON header
 * line, then exactly `size` bytes of content for regular files. cp-in writes
 * stdin to PATH through a temporary file and answers {"bytes_written":N}. */

static char cp_prefix[4096];
static size_t cp_root_len;

static int cp_emit(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)ftw;
    if (flag == FTW_NS || flag == FTW_DNR) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    bool reg = S_ISREG(st->st_mode), dir = S_ISDIR(st->st_mode), link = S_ISLNK(st->st_mode);
    if (!reg && !dir && !link) return 0; /* devices, fifos and sockets are not copied */
    char rel[8192], target[4096] = "", jp[16400], jt[8300];
    snprintf(rel, sizeof rel, "%s%s", cp_prefix, path + cp_root_len);
    if (link) {
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = '\0';
    }
    json_str(jp, sizeof jp, rel);
    json_str(jt, sizeof jt, target);
    printf("{\"path\":%s,\"mode\":%u,\"is_dir\":%s,\"is_symlink\":%s,\"link_target\":%s,"
           "\"size\":%lld,\"mtime\":%lld,\"uid\":%u,\"gid\":%u}\n",
           jp, st->st_mode & 0777, dir ? "true" : "false", link ? "true" : "false", jt,
           reg ? (long long)st->st_size : 0LL, (long long)st->st_mtime, st->st_uid, st->st_gid);
    if (!reg) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    char buf[65536];
    for (off_t left = st->st_size; left > 0;) {
        ssize_t n = read(fd, buf, left < (off_t)sizeof buf ? (size_t)left : sizeof buf);
        if (n <= 0) {
            fprintf(stderr, "%s: changed size while being copied\n", path);
            close(fd);
            return -1;
        }
        fwrite(buf, 1, (size_t)n, stdout);
        left -= n;
    }
    close(fd);
    return 0;
}

static int cp_out(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: agent cp-out PATH FOLLOW\n"); return 2; }
    char root[4096], name[4096];
    struct stat st;
    snprintf(name, sizeof name, "%s", argv[0]);
    if (lstat(argv[0], &st) < 0) { fprintf(stderr, "%s: %s\n", argv[0], strerror(errno)); return 1; }
    /* Following links applies to the path asked for; links inside a tree are copied as links. */
    if (!strcmp(argv[1], "1") ? !realpath(argv[0], root) : !snprintf(root, sizeof root, "%s", argv[0])) {
        fprintf(stderr, "%s: %s\n", argv[0], strerror(errno));
        return 1;
    }
    snprintf(cp_prefix, sizeof cp_prefix, "%s", basename(name));
    size_t len = strlen(root);
    while (len > 1 && root[len - 1] == '/') root[--len] = '\0';
    cp_root_len = len;
    int r = nftw(root, cp_emit, 64, FTW_PHYS);
    if (fflush(stdout) != 0 || ferror(stdout)) { fprintf(stderr, "write failed\n"); return 1; }
    return r == 0 ? 0 : 1;
}

static int cp_in(int argc, char **argv)
{
    if (argc < 5) { fprintf(stderr, "usage: agent cp-in PATH MODE UID GID ISDIR\n"); return 2; }
    const char *path = argv[0];
    mode_t mode = (mode_t)strtol(argv[1], NULL, 8) & 07777;
    long uid = strcmp(argv[2], "-") ? atol(argv[2]) : -1, gid = strcmp(argv[3], "-") ? atol(argv[3]) : -1;
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", path);
    mkdir_p(dirname(parent));
    if (!strcmp(argv[4], "1")) {
        if ((mkdir(path, mode) < 0 && errno != EEXIST) || chmod(path, mode) < 0 ||
            (uid >= 0 && chown(path, (uid_t)uid, (gid_t)gid) < 0)) {
            fprintf(stderr, "%s: %s\n", path, strerror(errno));
            return 1;
        }
        printf("{\"bytes_written\":0}\n");
        return 0;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.ember-cp-%d", path, getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) { fprintf(stderr, "%s: %s\n", path, strerror(errno)); return 1; }
    char buf[65536];
    long long total = 0;
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0) goto fail;
            off += w;
        }
        total += n;
    }
    if (n < 0 || fchmod(fd, mode) < 0 || (uid >= 0 && fchown(fd, (uid_t)uid, (gid_t)gid) < 0) ||
        close(fd) < 0 || rename(tmp, path) < 0) {
        fd = -1;
        goto fail;
    }
    printf("{\"bytes_written\":%lld}\n", total);
    return 0;
fail:
    fprintf(stderr, "%s: %s\n", path, strerror(errno));
    if (fd >= 0) close(fd);
    unlink(tmp);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "cp-out")) return cp_out(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "cp-in")) return cp_in(argc - 2, argv + 2);
    if (argc < 2) { logmsg("usage: agent CONFIG_DEVICE"); return 2; }
    config_dev = argv[1];
    size_t clen;
    char *craw = read_config(config_dev, &clen);
    if (!craw || !(inbuf = malloc(HDR + MAX_PAYLOAD))) {
        /* PID 1 must not just die (a kernel panic tells the host nothing): say why, power off. */
        logmsg("cannot start: %s: %s", craw ? "out of memory" : config_dev, strerror(errno));
        workload_not_started(125, craw ? "ember-agent: out of memory" : "ember-agent: cannot read its config");
        if (getpid() == 1) power_off();
        return 1;
    }
    kv_parse(craw, clen, &cfg);

    sigset_t mask;
    sigemptyset(&mask);
    for (int s = 1; s < 32; s++)
        if (s != SIGKILL && s != SIGSTOP && s != SIGSEGV && s != SIGBUS && s != SIGFPE && s != SIGILL)
            sigaddset(&mask, s);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    g_mask = mask;
    /* Blocked signals queue for the signalfd; the kernel drops only unblocked, unhandled
       ones sent to PID 1, and the no-op handlers cover any moment they are unblocked. */
    struct sigaction sa = {.sa_handler = noop_handler};
    for (int s = 1; s < 32; s++)
        if (sigismember(&mask, s)) sigaction(s, &sa, NULL);

    char **args = kv_list(&cfg, "arg");
    /* systemd must be PID 1: it becomes the workload and we run as its child. */
    bool init_system = getpid() == 1 && args && is_init_system(args[0]);
    pid_t pid = init_system ? fork() : 0;
    if (pid < 0) {
        char why[200];
        snprintf(why, sizeof why, "cannot start %s: fork: %s", args[0], strerror(errno));
        workload_not_started(126, why);
    } else if (init_system) {
        if (pid > 0) {
            char **env = kv_list(&cfg, "env"), *none[] = {NULL};
            sigprocmask(SIG_UNBLOCK, &mask, NULL);
            environ = workload_env(env ? env : none, &(struct user){.home = "/root"});
            /* Exec the file /sbin/init points to, as systemd itself does when it
             * leaves an initrd: PID 1 is then named "systemd" (/proc/1/comm),
             * which tools that detect the init system look at. argv stays. */
            char path[PATH_MAX];
            execv(realpath(args[0], path) ? path : args[0], args);
            logmsg("cannot exec %s: %s", args[0], strerror(errno));
            _exit(1);
        }
        wl.init_mode = true;
        wl.pid = 1;
        wl.state = ST_RUNNING;
    } else {
        start_workload(&cfg);
    }
    free(args);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    open_port();
    announce_address("eth0");
    if (wl.state == ST_RUNNING) send_json(T_READY, 0, "{\"state\":\"running\"}");
    loop(sfd);
}
