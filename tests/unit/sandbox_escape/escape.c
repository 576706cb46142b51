/* Tries every way out of imagebuilder's sandbox (tests/unit/test_sandbox.py) and prints one line
 * per attempt: "NAME escaped DETAIL" or "NAME blocked DETAIL". Run as the "app" of a training run:
 *     escape HOST_SECRET HOST_MARKER HOST_PORT
 * HOST_SECRET is a host file outside the root, HOST_MARKER a host path that must stay absent,
 * HOST_PORT a TCP port listening on the host's loopback. Built with gcc -static -pthread. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <dirent.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

static const char *secret, *marker;
static int host_port;

static void say(const char *name, int escaped, const char *detail) {
    printf("%s %s %s\n", name, escaped ? "escaped" : "blocked", detail);
    fflush(stdout);
}

/* Whether the host's secret can be read, and the marker written, under prefix. */
static int reach(const char *prefix) {
    char path[4096];
    snprintf(path, sizeof path, "%s%s", prefix, secret);
    int fd = open(path, O_RDONLY);
    int got = fd >= 0;
    if (fd >= 0) close(fd);
    snprintf(path, sizeof path, "%s%s", prefix, marker);
    fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) { got = 1; write(fd, "escaped\n", 8); close(fd); }
    return got;
}

static void try_chroot(void) {
    mkdir("/tmp/jail", 0755);
    if (chroot("/tmp/jail") != 0) { say("chroot", 0, strerror(errno)); return; }
    for (int i = 0; i < 64; i++) chdir("..");
    chroot(".");
    say("chroot", reach(""), "chroot then chdir .. then chroot .");
}

static void try_proc_roots(void) {
    say("proc1root", reach("/proc/1/root"), "/proc/1/root");
    say("procselfroot", reach("/proc/self/root"), "/proc/self/root");
    DIR *d = opendir("/proc");
    struct dirent *e;
    int got = 0;
    char prefix[300];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        snprintf(prefix, sizeof prefix, "/proc/%s/cwd", e->d_name);
        got |= reach(prefix);
        snprintf(prefix, sizeof prefix, "/proc/%s/root", e->d_name);
        got |= reach(prefix);
    }
    if (d) closedir(d);
    say("procpids", got, "/proc/PID/cwd and /proc/PID/root of every process");
    say("direct", reach(""), "the host paths themselves");
}

static void try_mount(void) {
    int r = mount("none", "/tmp", "tmpfs", 0, NULL);
    say("mount", r == 0, r ? strerror(errno) : "mounted");
    r = mount("/", "/tmp", NULL, MS_BIND, NULL);
    say("bindmount", r == 0, r ? strerror(errno) : "mounted");
}

static void try_userns(void) {
    int r = unshare(CLONE_NEWUSER);
    if (r == 0) {
        int m = mount("none", "/tmp", "tmpfs", 0, NULL);
        int c = chroot("/tmp");
        say("unshare", 1, m == 0 || c == 0 ? "then mount or chroot worked" : "new user ns");
        return;
    }
    say("unshare", 0, strerror(errno));
    long pid = syscall(SYS_clone, CLONE_NEWUSER | CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    say("clonens", pid >= 0, pid >= 0 ? "cloned into a new user ns" : strerror(errno));
}

static void try_ptrace(void) {
    long r = ptrace(PTRACE_ATTACH, 1, 0, 0);
    say("ptrace1", r == 0, r ? strerror(errno) : "attached to PID 1");
    if (r == 0) {
        waitpid(1, NULL, __WALL);
        ptrace(PTRACE_DETACH, 1, 0, 0);
    }
    pid_t child = fork();
    if (child == 0) _exit(ptrace(PTRACE_TRACEME, 0, 0, 0) == 0 ? 0 : 1);
    int status = 0;
    waitpid(child, &status, 0);
    say("traceme", WIFEXITED(status) && WEXITSTATUS(status) == 0, "PTRACE_TRACEME in a child");
    int fd = open("/proc/1/mem", O_RDWR);
    say("proc1mem", fd >= 0, fd >= 0 ? "opened" : strerror(errno));
}

static void try_setuid(void) {
    int r = setuid(0);
    say("setuid0", r == 0 || getuid() == 0, r ? strerror(errno) : "uid 0");
}

static void try_network(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(host_port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int r = connect(s, (struct sockaddr *)&a, sizeof a);
    say("hostloopback", r == 0, r ? strerror(errno) : "connected to the host's listener");
    close(s);
    s = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_port = htons(80);
    inet_pton(AF_INET, "192.0.2.1", &a.sin_addr);
    r = connect(s, (struct sockaddr *)&a, sizeof a);
    say("outside", r == 0, r ? strerror(errno) : "connected outside");
    close(s);
}

/* The filtered calls, asked with harmless arguments: EPERM (ENOSYS for clone3) from the filter,
 * where the kernel itself would say EINVAL, EFAULT or EBADF. */
static void try_filtered(void) {
    static const struct { const char *name; long nr; } calls[] = {
        {"setns", SYS_setns}, {"umount2", SYS_umount2}, {"pivot_root", SYS_pivot_root},
        {"process_vm_readv", SYS_process_vm_readv}, {"process_vm_writev", SYS_process_vm_writev},
        {"keyctl", SYS_keyctl}, {"add_key", SYS_add_key}, {"request_key", SYS_request_key},
        {"bpf", SYS_bpf}, {"perf_event_open", SYS_perf_event_open},
        {"open_by_handle_at", SYS_open_by_handle_at}, {"name_to_handle_at", SYS_name_to_handle_at},
        {"init_module", SYS_init_module}, {"finit_module", SYS_finit_module},
        {"delete_module", SYS_delete_module}, {"kexec_load", SYS_kexec_load},
        {"kexec_file_load", SYS_kexec_file_load}, {"reboot", SYS_reboot},
        {"swapon", SYS_swapon}, {"swapoff", SYS_swapoff}, {"fsopen", 430}, {"fsmount", 432},
        {"move_mount", 429}, {"open_tree", 428}, {"fsconfig", 431}, {"fspick", 433},
        {"mount_setattr", 442},
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
        long r = syscall(calls[i].nr, -1L, 0L, 0L, 0L, 0L, 0L);
        char detail[64];
        snprintf(detail, sizeof detail, "errno %d", r == 0 ? 0 : errno);
        say(calls[i].name, !(r == -1 && errno == EPERM), detail);
    }
    long r = syscall(435, 0L, 0L);
    say("clone3", !(r == -1 && errno == ENOSYS), r == -1 && errno == ENOSYS ? "ENOSYS" : "allowed");
}

/* The limits the sandbox sets, and whether the app can raise them again. */
static void try_limits(void) {
    struct rlimit lim;
    getrlimit(RLIMIT_NPROC, &lim);
    printf("nproc %llu %llu\n", (unsigned long long)lim.rlim_cur, (unsigned long long)lim.rlim_max);
    struct rlimit more = {lim.rlim_max + 1, lim.rlim_max + 1};
    int r = setrlimit(RLIMIT_NPROC, &more);
    say("raisenproc", r == 0, r == 0 ? "raised" : strerror(errno));
    getrlimit(RLIMIT_CORE, &lim);
    struct rlimit core = {1 << 20, 1 << 20};
    r = setrlimit(RLIMIT_CORE, &core);
    say("raisecore", r == 0, r == 0 ? "raised" : strerror(errno));
}

static void *thread_main(void *arg) { return arg; }

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    secret = argv[1];
    marker = argv[2];
    host_port = atoi(argv[3]);
    pthread_t t;
    void *out = NULL;
    int r = pthread_create(&t, NULL, thread_main, (void *)"ran");
    if (r == 0) pthread_join(t, &out);
    printf("thread %s\n", out ? (char *)out : strerror(r));
    FILE *f = fopen("/proc/self/status", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "Uid:", 4) || !strncmp(line, "Gid:", 4) || !strncmp(line, "Cap", 3)
            || !strncmp(line, "NoNewPrivs:", 11) || !strncmp(line, "Seccomp:", 8))
            printf("status %s", line);
    if (f) fclose(f);
    f = fopen("/proc/self/mountinfo", "r");
    while (f && fgets(line, sizeof line, f)) printf("mountinfo %s", line);
    if (f) fclose(f);
    f = fopen("/proc/net/dev", "r");
    while (f && fgets(line, sizeof line, f)) if (strchr(line, ':')) printf("netdev %s", line);
    if (f) fclose(f);
    try_limits();
    try_proc_roots();
    try_mount();
    try_userns();
    try_ptrace();
    try_setuid();
    try_network();
    try_filtered();
    try_chroot();  /* last: it changes this process's root */
    return 0;
}
