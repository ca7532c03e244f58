/* A tiny static workload for Ember's tests, demo and benchmarks.
 *
 *   hello                 print a greeting (argv and $GREETING), then exit 0
 *   hello serve [PORT]    also serve HTTP on PORT (default $PORT, else 8080),
 *                         answering every request with "hello from ember\n",
 *                         until SIGTERM
 *   hello exit N          print the greeting and exit with status N
 *   hello udp-echo PORT   answer every UDP datagram on PORT with itself, until SIGTERM
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;

static void on_term(int sig) { (void)sig; stopping = 1; }

static int serve(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) || listen(fd, 64)) {
        perror("hello: listen");
        return 1;
    }
    printf("hello: serving on port %d\n", port);
    fflush(stdout);
    static const char reply[] =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n"
        "Connection: close\r\n\r\nhello from ember\n";
    while (!stopping) {
        int client = accept(fd, NULL, NULL);
        if (client < 0) continue;
        char buf[4096];
        if (read(client, buf, sizeof buf) > 0) {
            if (write(client, reply, sizeof reply - 1) < 0) perror("hello: write");
        }
        close(client);
    }
    printf("hello: stopping gracefully\n");
    return 0;
}

static int udp_echo(int port) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr)) {
        perror("hello: bind");
        return 1;
    }
    printf("hello: echoing UDP on port %d\n", port);
    fflush(stdout);
    while (!stopping) {
        char buf[65536];
        struct sockaddr_in peer;
        socklen_t size = sizeof peer;
        ssize_t got = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &size);
        if (got >= 0 && sendto(fd, buf, got, 0, (struct sockaddr *)&peer, size) < 0)
            perror("hello: sendto");
    }
    return 0;
}

int main(int argc, char **argv) {
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    const char *greeting = getenv("GREETING");
    printf("hello from ember: greeting=%s args=", greeting ? greeting : "(unset)");
    for (int i = 1; i < argc; i++) printf("%s%s", i > 1 ? "," : "", argv[i]);
    printf("\n");
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "serve") == 0) {
        const char *port = argc > 2 ? argv[2] : getenv("PORT");
        return serve(port ? atoi(port) : 8080);
    }
    if (argc > 2 && strcmp(argv[1], "exit") == 0) return atoi(argv[2]);
    if (argc > 2 && strcmp(argv[1], "udp-echo") == 0) return udp_echo(atoi(argv[2]));
    return 0;
}
