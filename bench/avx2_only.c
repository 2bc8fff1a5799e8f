/*
 * LD_PRELOAD shim: the process sees an x86-64 CPU with AVX2 and FMA but no AVX-512, no
 * VNNI (AVX-512 or AVX) and no AMX, at native speed — so ONNX Runtime's MLAS, torch's
 * cpuinfo and numpy pick the kernels they would on an AVX2-only CPU (Haswell .. Zen 3).
 *
 * Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, the "cpuid_fault" flag; KVM offers
 * it to guests) turns every CPUID instruction into a SIGSEGV; the handler runs the real
 * CPUID with faulting briefly off, clears the feature bits above and steps over the
 * instruction. Used by bench/as_avx2.sh for the AVX2 rows of bench/backends.py: qemu's
 * "-cpu Haswell" (the tests' way) emulates the same kernels, but ~30x slower, so its
 * timings mean nothing. Not used by the service or the tests.
 *
 * /proc/cpuinfo, the kernel's list of the same flags, is filtered to match (a copy in
 * memory without the avx512*, amx* and avx_vnni* flags) when opened through libc.
 *
 * Handlers that the program installs for SIGSEGV later (Python's faulthandler, torch's
 * DataLoader workers) are kept aside, not installed: ours stays first and passes every
 * fault that is not a CPUID on to them.
 *
 * No maintained tool masks CPUID for one process on Linux without a hypervisor; this is
 * the smallest way to do it.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static long cpuid_faulting(int fault) {
    /* ARCH_SET_CPUID's argument is "CPUID allowed": 0 makes it fault. */
    return syscall(SYS_arch_prctl, ARCH_SET_CPUID, fault ? 0 : 1);
}

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (leaf == 7 && sub == 0) {
        /* EBX: AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) |
                  (1u << 28) | (1u << 30) | (1u << 31));
        /* ECX: AVX512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: AVX512 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, FP16, AMX-TILE, AMX-INT8 */
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) |
                  (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~((1u << 4) | (1u << 5)); /* AVX-VNNI, AVX512 BF16 */
        r[3] &= ~((1u << 4) | (1u << 5)); /* AVX-VNNI-INT8, AVX-NE-CONVERT */
    }
}

/* Flags the masked CPU does not have, by prefix (as Linux names them). */
static const char *const hidden[] = {"avx512", "amx", "avx_vnni", "avx_ne_convert"};

static int is_hidden(const char *flag, size_t len) {
    for (size_t i = 0; i < sizeof hidden / sizeof *hidden; i++) {
        size_t n = strlen(hidden[i]);
        if (len >= n && strncmp(flag, hidden[i], n) == 0) return 1;
    }
    return 0;
}

typedef int (*open_fn)(const char *, int, ...);

/* A memfd holding /proc/cpuinfo without the hidden flags; -1 when that fails. */
static int filtered_cpuinfo(open_fn real_open) {
    static char in[1 << 20], out[1 << 20];
    int src = real_open("/proc/cpuinfo", O_RDONLY);
    if (src < 0) return -1;
    size_t size = 0;
    ssize_t got;
    while (size < sizeof in - 1 && (got = read(src, in + size, sizeof in - 1 - size)) > 0)
        size += (size_t)got;
    close(src);
    in[size] = 0;
    size_t used = 0;
    for (char *line = in; *line;) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) + 1 : strlen(line);
        char *colon = memchr(line, ':', len);
        if (strncmp(line, "flags", 5) == 0 && colon) {
            size_t head = (size_t)(colon - line) + 1;
            memcpy(out + used, line, head);
            used += head;
            for (char *word = colon + 1; word < line + len;) {
                while (word < line + len && (*word == ' ' || *word == '\n')) word++;
                char *stop = word;
                while (stop < line + len && *stop != ' ' && *stop != '\n') stop++;
                if (stop > word && !is_hidden(word, (size_t)(stop - word))) {
                    out[used++] = ' ';
                    memcpy(out + used, word, (size_t)(stop - word));
                    used += (size_t)(stop - word);
                }
                word = stop;
            }
            out[used++] = '\n';
        } else {
            memcpy(out + used, line, len);
            used += len;
        }
        line += len;
    }
    int fd = memfd_create("cpuinfo", 0);
    if (fd < 0) return -1;
    if (write(fd, out, used) != (ssize_t)used) { close(fd); return -1; }
    lseek(fd, 0, SEEK_SET);
    return fd;
}

#define OPEN_WRAPPER(name)                                                   \
    int name(const char *path, int flags, ...) {                             \
        static open_fn real;                                                 \
        if (!real) real = (open_fn)dlsym(RTLD_NEXT, #name);                  \
        va_list args;                                                        \
        va_start(args, flags);                                               \
        int mode = va_arg(args, int);                                        \
        va_end(args);                                                        \
        if (path && strcmp(path, "/proc/cpuinfo") == 0) {                    \
            int fd = filtered_cpuinfo(real);                                 \
            if (fd >= 0) return fd;                                          \
        }                                                                    \
        return real(path, flags, mode);                                      \
    }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
/* The program's own SIGSEGV handler, run for faults that are not a CPUID. */
static struct sigaction program_action;

static void pass_on(int sig, siginfo_t *info, void *raw) {
    if (program_action.sa_flags & SA_SIGINFO) {
        program_action.sa_sigaction(sig, info, raw);
    } else if (program_action.sa_handler != SIG_DFL && program_action.sa_handler != SIG_IGN) {
        program_action.sa_handler(sig);
    } else {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        real_sigaction(sig, &dfl, 0); /* the fault repeats, and kills as it would have */
    }
}

static void on_fault(int sig, siginfo_t *info, void *raw) {
    ucontext_t *ctx = raw;
    greg_t *g = ctx->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (ip == 0 || ip[0] != 0x0f || ip[1] != 0xa2) { /* not CPUID: a real fault */
        pass_on(sig, info, raw);
        return;
    }
    uint32_t leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX], r[4];
    cpuid_faulting(0);
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    cpuid_faulting(1);
    mask(leaf, sub, r);
    g[REG_RAX] = r[0];
    g[REG_RBX] = r[1];
    g[REG_RCX] = r[2];
    g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = program_action;
    if (act) program_action = *act;
    return 0;
}

__attribute__((constructor)) static void start(void) {
    struct sigaction action;
    real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    real_sigaction(SIGSEGV, &action, 0);
    if (cpuid_faulting(1) != 0) {
        static const char msg[] = "avx2_only: this kernel/CPU has no CPUID faulting\n";
        write(2, msg, sizeof msg - 1);
        _exit(3);
    }
}
