/* https-get: a small static HTTPS client for test guests (busybox has no verifying TLS).
 *
 *   https-get NAME IP PORT PATH [COUNT [HEADER...]]
 *
 * Connects to IP:PORT (no DNS: test guests have none for test names), sends SNI NAME,
 * verifies the server's certificate for NAME against the default trust store
 * (SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt), sends GET PATH with
 * Host: NAME and each HEADER ("Name: value"), and prints the status line and body of
 * the answer. COUNT > 1 repeats the request, each on a new connection (a new TLS
 * handshake), prints only the last answer, then "requests=<n> seconds=<s>".
 * Exit status: 0 on an answer, 2 on a TLS or connection failure (the reason on stderr).
 *
 *   https-get - IP PORT
 *
 * Plain TCP instead: sends a line, prints what comes back, and why the connection ended
 * ("connection reset by peer" for a refusal by the egress proxy).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what)
{
    unsigned long e = ERR_get_error();
    fprintf(stderr, "https-get: %s: %s\n", what, e ? ERR_reason_error_string(e) : "");
    return 2;
}

static int one(SSL_CTX *ctx, const char *name, const char *ip, int port, const char *path,
               char **headers, int nheaders, int print)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) return fail("bad IP");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("https-get: connect");
        return 2;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, name);
    SSL_set1_host(ssl, name);
    int rc = 0;
    if (SSL_connect(ssl) != 1) {
        long v = SSL_get_verify_result(ssl);
        if (v != X509_V_OK)
            fprintf(stderr, "https-get: certificate: %s\n", X509_verify_cert_error_string(v));
        rc = fail("TLS handshake");
        goto out;
    }
    char req[8192];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n",
                     path, name);
    for (int i = 0; i < nheaders; i++)
        n += snprintf(req + n, sizeof req - n, "%s\r\n", headers[i]);
    n += snprintf(req + n, sizeof req - n, "\r\n");
    if (SSL_write(ssl, req, n) != n) {
        rc = fail("write");
        goto out;
    }
    char buf[16384];
    int got, seen = 0;
    while ((got = SSL_read(ssl, buf, sizeof buf)) > 0) {
        seen += got;
        if (print) fwrite(buf, 1, got, stdout);
    }
    if (!seen) rc = fail("no answer");
out:
    SSL_free(ssl);
    close(fd);
    return rc;
}

static int tcp(const char *ip, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1 || fd < 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("https-get: connect");
        return 2;
    }
    char buf[4096];
    ssize_t got;
    if (write(fd, "hello\n", 6) != 6) perror("https-get: write");
    while ((got = read(fd, buf, sizeof buf)) > 0) fwrite(buf, 1, got, stdout);
    if (got < 0) {
        perror("https-get: read");
        return 2;
    }
    printf("https-get: closed by the peer\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "-")) return tcp(argv[2], atoi(argv[3]));
    if (argc < 5) {
        fprintf(stderr, "usage: https-get NAME IP PORT PATH [COUNT [HEADER...]]\n");
        return 64;
    }
    int count = argc > 5 ? atoi(argv[5]) : 1;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    const char *bundle = getenv("SSL_CERT_FILE");
    if (!SSL_CTX_load_verify_locations(ctx, bundle ? bundle : "/etc/ssl/certs/ca-certificates.crt",
                                       NULL))
        return fail("cannot load the trust store");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = 0;
    for (int i = 0; i < count && !rc; i++)
        rc = one(ctx, argv[1], argv[2], atoi(argv[3]), argv[4], argv + 6,
                 argc > 6 ? argc - 6 : 0, i == count - 1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (count > 1 && !rc)
        printf("\nrequests=%d seconds=%.3f\n", count,
               (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
    return rc;
}
