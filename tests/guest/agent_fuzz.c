/*
 * The guest agent's pure parsers over random and truncated input, built with
 * -fsanitize=address,undefined by tests/guest/test_agent_fuzz.py: frames
 * (next_frame), key=value records (kv_parse, kv_get, kv_list) and JSON strings
 * (json_str). Each input sits in a heap block of exactly its size, so a read
 * one byte past it is an AddressSanitizer error. Only parsers run: nothing here
 * forks, signals, sets the clock or touches a network device.
 *
 * `agent_fuzz failures` runs the agent's failure paths instead: fork, pipe2,
 * ptsname and every allocation fail on demand (fakes below; the harness never
 * forks), and the agent must neither crash, leak an fd, nor record a pid of -1.
 *
 * Usage: agent_fuzz ITERATIONS SEED | agent_fuzz failures; prints "ok ..." and
 * exits 0, or aborts.
 */
#define main agent_main
#define fork fuzz_fork
#define pipe2 fuzz_pipe2
#define ptsname fuzz_ptsname
#define malloc fuzz_malloc
#define calloc fuzz_calloc
#define realloc fuzz_realloc
#include "../../ember/guest/agent/agent.c"
#undef main
#undef fork
#undef pipe2
#undef ptsname
#undef malloc
#undef calloc
#undef realloc
/* The real ones (the headers above declared the fakes' names instead). */
extern pid_t fork(void);
extern int pipe2(int fds[2], int flags);
extern char *ptsname(int fd);
extern void *malloc(size_t n);
extern void *calloc(size_t n, size_t size);
extern void *realloc(void *p, size_t n);

/* ---------- fakes for the failure paths ---------- */

static bool fail_alloc;     /* every allocation fails */
static int pipes_before_failure = -1; /* pipe2 fails after this many successes (-1: never) */
static bool fail_ptsname;

pid_t fuzz_fork(void) { errno = EAGAIN; return -1; } /* the harness never forks */

int fuzz_pipe2(int fds[2], int flags)
{
    if (pipes_before_failure == 0) { errno = EMFILE; return -1; }
    if (pipes_before_failure > 0) pipes_before_failure--;
    return pipe2(fds, flags);
}

char *fuzz_ptsname(int fd) { return fail_ptsname ? NULL : ptsname(fd); }
void *fuzz_malloc(size_t n) { return fail_alloc ? NULL : malloc(n); }
void *fuzz_calloc(size_t n, size_t size) { return fail_alloc ? NULL : calloc(n, size); }
void *fuzz_realloc(void *p, size_t n) { return fail_alloc ? NULL : realloc(p, n); }

static uint64_t rng;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static void fail(const char *what, size_t case_no)
{
    fprintf(stderr, "agent_fuzz: %s (case %zu)\n", what, case_no);
    abort();
}

/* Random bytes biased towards what the parsers look for. */
static void fill(unsigned char *buf, size_t len)
{
    static const unsigned char special[] = {MAGIC, 0, '=', '"', '\\', '\n', 0x1f, 0x7f, 0xff};
    for (size_t i = 0; i < len; i++)
        buf[i] = rnd() % 4 ? (unsigned char)rnd() : special[rnd() % sizeof special];
}

static unsigned char *copy_of(const unsigned char *src, size_t len)
{
    unsigned char *block = malloc(len ? len : 1);
    if (!block) abort();
    memcpy(block, src, len);
    return block;
}

/* Split a buffer into frames as parse_input does; check every frame lies inside it. */
static size_t split_frames(unsigned char *buf, size_t len, size_t case_no)
{
    size_t off = 0, frames = 0;
    struct frame f;
    do {
        size_t used = next_frame(buf + off, len - off, &f);
        if (used > len - off) fail("next_frame consumed more than it was given", case_no);
        if (f.p) {
            if (f.p < buf + off || f.p + f.n > buf + off + used || f.n > MAX_PAYLOAD)
                fail("frame payload outside the input", case_no);
            frames++;
        } else if (len - off - used >= HDR && used == 0 && buf[off] != MAGIC) {
            fail("garbage not skipped", case_no);
        }
        off += used;
    } while (f.p);
    return frames;
}

static size_t put_frame(unsigned char *out, uint8_t type, uint32_t ch, const unsigned char *p,
                        uint32_t n)
{
    unsigned char h[HDR] = {MAGIC, type, 0, 0, (unsigned char)(ch >> 24), (unsigned char)(ch >> 16),
                            (unsigned char)(ch >> 8), (unsigned char)ch, (unsigned char)(n >> 24),
                            (unsigned char)(n >> 16), (unsigned char)(n >> 8), (unsigned char)n};
    memcpy(out, h, HDR);
    memcpy(out + HDR, p, n);
    return HDR + n;
}

/* Valid frames, cut at a random point: only whole frames come out, in order. */
static void frames_round_trip(size_t case_no)
{
    unsigned char stream[8 * (HDR + 64)], payload[64];
    uint32_t sizes[8];
    size_t len = 0, count = 1 + rnd() % 8;
    for (size_t i = 0; i < count; i++) {
        sizes[i] = rnd() % sizeof payload;
        fill(payload, sizes[i]);
        len += put_frame(stream + len, (uint8_t)(i + 1), (uint32_t)i, payload, sizes[i]);
    }
    size_t cut = rnd() % (len + 1);
    unsigned char *buf = copy_of(stream, cut);
    size_t off = 0, seen = 0;
    struct frame f;
    for (;;) {
        size_t used = next_frame(buf + off, cut - off, &f);
        if (!f.p) break;
        if (used != HDR + sizes[seen] || f.type != seen + 1 || f.ch != seen || f.n != sizes[seen])
            fail("a valid frame did not come back as sent", case_no);
        off += used;
        seen++;
    }
    size_t whole = 0, expect = 0;
    for (size_t i = 0; i < count && whole + HDR + sizes[i] <= cut; i++) {
        whole += HDR + sizes[i];
        expect++;
    }
    if (seen != expect) fail("a truncated stream lost or invented frames", case_no);
    free(buf);
}

static void check_kv(const unsigned char *src, size_t len, size_t case_no)
{
    unsigned char *buf = copy_of(src, len);
    struct kv kv;
    kv_parse((char *)buf, len, &kv);
    if (kv.n < 0 || kv.n > 1024) fail("kv count out of range", case_no);
    for (int i = 0; i < kv.n; i++) {
        const char *k = kv.keys[i], *v = kv.vals[i];
        if ((unsigned char *)k < buf || (unsigned char *)v >= buf + len)
            fail("kv entry outside the record", case_no);
        /* Both must end inside the buffer: strlen would run past it otherwise (ASan). */
        if (strnlen(v, (size_t)(buf + len - (unsigned char *)v)) == (size_t)(buf + len - (unsigned char *)v))
            fail("kv value not terminated inside the record", case_no);
        if (kv_get(&kv, k) == NULL) fail("kv_get misses a parsed key", case_no);
    }
    char **list = kv_list(&kv, kv.n ? kv.keys[rnd() % kv.n] : "arg");
    if (!list) fail("kv_list failed", case_no);
    for (char **item = list; *item; item++) (void)strlen(*item);
    free(list);
    free(buf);
}

static void check_json_str(const unsigned char *src, size_t len, size_t case_no)
{
    char *text = (char *)copy_of(src, len + 1);
    text[len] = '\0';
    size_t cap = rnd() % 2 ? len * 6 + 3 : rnd() % 40;
    char *dst = (char *)malloc(cap ? cap : 1);
    if (!dst) abort();
    size_t n = json_str(dst, cap, text);
    if (cap >= 3) {
        if (n >= cap || dst[n] != '\0' || dst[0] != '"' || dst[n - 1] != '"')
            fail("json_str output is not one terminated string", case_no);
        bool escaped = false;
        for (size_t i = 1; i + 1 < n; i++) {
            unsigned char c = (unsigned char)dst[i];
            if (c < 0x20) fail("json_str left a control character raw", case_no);
            if (!escaped && c == '"') fail("json_str left a quote unescaped", case_no);
            escaped = !escaped && c == '\\';
        }
        if (escaped) fail("json_str ended inside an escape", case_no);
    } else if (n != 0) {
        fail("json_str wrote into a buffer too small for \"\"", case_no);
    }
    free(dst);
    free(text);
}

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) abort();
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

static void expect(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "agent_fuzz failures: %s\n", what);
        abort();
    }
}

/* A request record as the host sends it: "key=value\0"... parsed in place. */
static void request(struct kv *kv, char *buf, size_t cap, const char *const *pairs)
{
    size_t n = 0;
    for (; *pairs; pairs++) n += (size_t)snprintf(buf + n, cap - n, "%s", *pairs) + 1;
    kv_parse(buf, n, kv);
}

static int failure_paths(void)
{
    char cfgfile[] = "/tmp/agent-fuzz-config-XXXXXX", buf[256];
    int cfd = mkstemp(cfgfile);
    expect(cfd >= 0, "mkstemp");
    close(cfd);
    config_dev = cfgfile;
    struct kv req;
    static const char *const run_true[] = {"arg=/bin/true", "env=A=1", NULL};
    static const char *const exec_tty[] = {"arg=/bin/true", "tty=1", NULL};

    /* fork fails: the workload "exits" 126; no pid, so no kill(-1, sig) later. */
    request(&cfg, buf, sizeof buf, run_true);
    int fds = open_fds();
    start_workload(&cfg);
    expect(wl.state == ST_EXITED && wl.pid == 0 && wl.exit_code == 126, "failed fork: workload state");
    expect(strstr(wl.message, "fork") != NULL, "failed fork: message");
    expect(open_fds() == fds, "failed fork: fds leaked by start_workload");

    /* exec: fork fails, pipe2 fails halfway, ptsname fails: no session, no fd left. */
    char rbuf[256];
    request(&req, rbuf, sizeof rbuf, run_true);
    exec_start(7, &req);
    expect(nsessions == 0 && open_fds() == fds, "failed fork: exec session or fds left");
    for (int ok = 0; ok < 4; ok++) {
        pipes_before_failure = ok;
        request(&req, rbuf, sizeof rbuf, run_true);
        exec_start(8, &req);
        expect(nsessions == 0 && open_fds() == fds, "pipe2 failing halfway: fds leaked");
    }
    pipes_before_failure = -1;
    fail_ptsname = true;
    request(&req, rbuf, sizeof rbuf, exec_tty);
    exec_start(9, &req);
    expect(nsessions == 0 && open_fds() == fds, "ptsname failing: pty leaked");
    fail_ptsname = false;

    /* Every allocation fails: PID 1 answers errors and goes on. */
    fail_alloc = true;
    memset(&wl, 0, sizeof wl);
    start_workload(&cfg);
    expect(wl.state == ST_EXITED && wl.pid == 0, "out of memory: workload state");
    request(&req, rbuf, sizeof rbuf, run_true);
    exec_start(10, &req);
    expect(nsessions == 0 && open_fds() == fds, "out of memory: exec");
    host_up = true;
    send_json(T_STATUS, 0, "{}"); /* the output queue cannot grow: the frame is dropped */
    expect(outlen == 0, "out of memory: frame queued anyway");
    struct session s = {.ch = 11, .in_fd = -1, .out_fd = -1, .err_fd = -1};
    session_stdin(&s, F_EOF, (unsigned char *)"data", 4);
    expect(s.npending == 0 && s.in_eof, "out of memory: stdin");
    const char *why = apply_network(&req); /* no mac, ip or gateway: only the dns list */
    expect(why && !strcmp(why, "out of memory"), "out of memory: network");
    fail_alloc = false;
    host_up = false;
    unlink(cfgfile);
    printf("ok failure paths\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "failures")) return failure_paths();
    size_t iterations = argc > 1 ? strtoull(argv[1], NULL, 10) : 100000;
    rng = argc > 2 ? strtoull(argv[2], NULL, 10) : 88172645463325252ull;
    if (!rng) rng = 1;
    static unsigned char input[4 * HDR + 4096];
    size_t frames = 0;
    for (size_t i = 0; i < iterations; i++) {
        size_t len = rnd() % (rnd() % 8 ? 64 : sizeof input);
        fill(input, len);
        unsigned char *buf = copy_of(input, len);
        frames += split_frames(buf, len, i);
        free(buf);
        for (size_t cut = len; cut > 0 && cut + 8 > len; cut--) { /* truncated tails */
            buf = copy_of(input, cut);
            split_frames(buf, cut, i);
            free(buf);
        }
        frames_round_trip(i);
        check_kv(input, len, i);
        check_kv(input, rnd() % (len + 1), i);
        check_json_str(input, len, i);
    }
    printf("ok %zu cases, %zu frames found in random input\n", iterations, frames);
    return 0;
}
