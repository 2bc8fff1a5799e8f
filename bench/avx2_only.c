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
#include <signal.h>
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
