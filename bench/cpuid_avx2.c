/* LD_PRELOAD shim: a process that sees this CPU as AVX2-only (no AVX-512, no VNNI, no AMX).
 *
 * Why: Lambda's x86_64 promises only AVX2, and the int8 kernels of onnxruntime (MLAS) and LiteRT (XNNPACK)
 * pick their code path from CPUID once, at start-up. On a build machine with AVX-512/VNNI there is no
 * setting in either library to time the AVX2 path. Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID,
 * "cpuid_fault" in /proc/cpuinfo) makes every CPUID instruction of this process raise SIGSEGV; the handler
 * below runs the real CPUID with faulting briefly off, clears the AVX-512 / VNNI / AMX bits and returns.
 * The same cores then run the libraries' AVX2 kernels: a timing of the code path, not of an AVX2-only
 * chip (clock, caches and memory stay this machine's). The faulting flag is per thread, inherited by the
 * threads and forks of this process and reset by execve; LD_PRELOAD, kept in the environment, sets it
 * again in every program started from here.
 *
 * A program that sets its own SIGSEGV handler (Python's faulthandler: pytest, -X faulthandler) would take
 * the traps away; the shim's sigaction() keeps its handler installed, remembers the program's, and passes
 * every fault that is not a CPUID on to it (or to the default action: the process dies as it would have).
 *
 * Build: cc -O2 -shared -fPIC -o cpuid_avx2.so cpuid_avx2.c -ldl   (bench/isa.py does it)
 * CPUID_AVX2_REPORT=1 in the environment: print the leaf-7 registers as seen through the mask, and at
 * exit how many CPUID instructions were trapped (a count that grows with the work would mean a library
 * calls CPUID in a hot loop, and the timing would include the traps).
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

/* Bits a Haswell-class AVX2 CPU does not have (Intel SDM vol. 2A, CPUID; leaf 7). */
#define LEAF7_EBX_CLEAR                                                                                       \
    ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31))
/* AVX512F, DQ, IFMA, PF, ER, CD, BW, VL */
#define LEAF7_ECX_CLEAR ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
/* AVX512_VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
#define LEAF7_EDX_CLEAR ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25))
/* AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16, AVX512_FP16, AMX_TILE, AMX_INT8 */
#define LEAF7_1_EAX_CLEAR ((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23))
/* AVX_VNNI, AVX512_BF16, AMX_FP16, AVX_IFMA */
#define LEAF7_1_EDX_CLEAR ((1u << 4) | (1u << 5) | (1u << 10) | (1u << 19))
/* AVX_VNNI_INT8, AVX_NE_CONVERT, AVX_VNNI_INT16, AVX10 */

static volatile long trapped;

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
static struct sigaction program_action; /* the program's own SIGSEGV wish (initially the default) */
static int installed;                   /* from here on, sigaction(SIGSEGV) only records the wish */

/* libc's sigaction, under this file's own. */
static sigaction_fn next_sigaction(void) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    return real_sigaction;
}

int sigaction(int sig, const struct sigaction *action, struct sigaction *old) {
    if (sig != SIGSEGV || !installed) return next_sigaction()(sig, action, old);
    if (old) *old = program_action;
    if (action) program_action = *action;
    return 0;
}

/* A fault that is not a CPUID: what the program asked for, else the default action (the process dies). */
static void pass_on(int sig, siginfo_t *info, void *context) {
    if ((program_action.sa_flags & SA_SIGINFO) && program_action.sa_sigaction) {
        program_action.sa_sigaction(sig, info, context);
    } else if (program_action.sa_handler != SIG_DFL && program_action.sa_handler != SIG_IGN) {
        program_action.sa_handler(sig);
    } else {
        struct sigaction fallback;
        memset(&fallback, 0, sizeof fallback);
        fallback.sa_handler = SIG_DFL;
        next_sigaction()(SIGSEGV, &fallback, NULL);
        raise(sig);
    }
}

static int set_cpuid_enabled(int enabled) { return (int)syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

/* The instruction itself: it traps to on_sigsegv while faulting is on. */
static void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(subleaf));
}

static void mask(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    if (leaf == 7 && subleaf == 0) {
        r[1] &= ~LEAF7_EBX_CLEAR;
        r[2] &= ~LEAF7_ECX_CLEAR;
        r[3] &= ~LEAF7_EDX_CLEAR;
    } else if (leaf == 7 && subleaf == 1) {
        r[0] &= ~LEAF7_1_EAX_CLEAR;
        r[3] &= ~LEAF7_1_EDX_CLEAR;
    } else if (leaf == 0x1d || leaf == 0x1e || leaf == 0x24) {
        r[0] = r[1] = r[2] = r[3] = 0; /* AMX tile and AVX10 description leaves */
    }
}

static void on_sigsegv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = (ucontext_t *)context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        pass_on(sig, info, context);
        return;
    }
    uint32_t leaf = (uint32_t)g[REG_RAX], subleaf = (uint32_t)g[REG_RCX], r[4];
    set_cpuid_enabled(1);
    cpuid(leaf, subleaf, r);
    set_cpuid_enabled(0);
    mask(leaf, subleaf, r);
    g[REG_RAX] = r[0];
    g[REG_RBX] = r[1];
    g[REG_RCX] = r[2];
    g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
    __atomic_add_fetch(&trapped, 1, __ATOMIC_RELAXED);
}

static void report_at_exit(void) { fprintf(stderr, "cpuid_avx2: %ld CPUID instructions trapped\n", trapped); }

__attribute__((constructor)) static void start(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigsegv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    next_sigaction()(SIGSEGV, &action, NULL);
    installed = 1;
    if (set_cpuid_enabled(0) != 0) {
        fprintf(stderr, "cpuid_avx2: CPUID faulting is not available here (no cpuid_fault); nothing masked\n");
        return;
    }
    if (getenv("CPUID_AVX2_REPORT")) {
        uint32_t r[4];
        cpuid(7, 0, r); /* traps: the masked view */
        fprintf(stderr, "cpuid_avx2: leaf 7 ebx=%08x ecx=%08x edx=%08x (AVX512F %s, AVX512_VNNI %s, AMX_INT8 %s)\n",
                r[1], r[2], r[3], (r[1] >> 16) & 1 ? "on" : "off", (r[2] >> 11) & 1 ? "on" : "off",
                (r[3] >> 25) & 1 ? "on" : "off");
        cpuid(7, 1, r);
        fprintf(stderr, "cpuid_avx2: leaf 7.1 eax=%08x (AVX_VNNI %s)\n", r[0], (r[0] >> 4) & 1 ? "on" : "off");
        atexit(report_at_exit);
    }
}
