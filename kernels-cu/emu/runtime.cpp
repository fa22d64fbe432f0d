// runtime.cpp — the emulated device: fibers, schedules, launches, device memory, and the C ABI
// that crates/kernels/src/device/emu.rs calls (through dlopen; see build.rs).
//
// A launch runs its blocks on `workers` OS threads (the calling thread is one of them). Each
// worker keeps a pool of fiber stacks in kRegion-aligned regions:
//
//     region = [ guard page | stack ... | Fiber header ]       (the stack grows down from the header)
//
// so a stack overflow faults on the guard page, `icet_emu::self()` is found from any address in
// the running fiber's frame, and the header shares a page with the hot top of the stack. A block initialises one fiber per thread and runs
// them under its schedule until all have returned; the context switch is a dozen instructions
// (callee-saved registers, MXCSR and the x87 control word) instead of glibc's swapcontext,
// which makes a sigprocmask syscall per switch.
//
// Device memory: each allocation is its own mapping whose 256-byte-rounded end abuts a
// PROT_NONE page, so a kernel that reads or writes past a buffer faults (the fault handler names
// the kernel, block, thread and buffer); the slack between the requested size and the 256-byte
// boundary is filled with 0xFF (NaN in every storage type) and checked after each launch that
// was passed the buffer, so a write into it is reported too. Fresh memory reads as 0xFF, like
// uninitialised device memory that happens to hold NaN. Built with ASan, allocations come from
// ASan's allocator instead (redzones on both sides, use-after-free detection).
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "icet_emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define ICET_EMU_ASAN 1
#endif

#define EXPORT extern "C" __attribute__((visibility("default")))

// Bump when the C ABI below changes; the Rust side refuses a library of another version.
#define ICET_EMU_ABI 3

namespace icet_emu {

// ---- the context switch ----------------------------------------------------------------------------
#if defined(__x86_64__)
// void icet_emu_switch(void** save_sp, void* new_sp): saves the callee-saved state on the current
// stack, stores the stack pointer in *save_sp, and resumes the context saved at new_sp.
extern "C" void icet_emu_switch(void** save_sp, void* new_sp) __attribute__((visibility("hidden")));
extern "C" void icet_emu_fiber_start() __attribute__((visibility("hidden")));
asm(R"(
    .text
    .p2align 4
    .globl icet_emu_switch
    .hidden icet_emu_switch
    .type icet_emu_switch,@function
icet_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size icet_emu_switch, .-icet_emu_switch

    .p2align 4
    .globl icet_emu_fiber_start
    .hidden icet_emu_fiber_start
    .type icet_emu_fiber_start,@function
icet_emu_fiber_start:
    movq %r12, %rdi
    call icet_emu_fiber_main
    ud2
    .size icet_emu_fiber_start, .-icet_emu_fiber_start
)");
#define ICET_EMU_FAST_SWITCH 1
#else
// Other architectures: glibc's ucontext (correct, but a syscall per switch).
#include <ucontext.h>
#endif

extern "C" void icet_emu_fiber_main(Fiber* f) __attribute__((visibility("hidden"), noreturn, used));

// ---- launch and block state ------------------------------------------------------------------------
enum class Schedule : int { RoundRobin = 0, Reverse = 1, Greedy = 2, GreedyReverse = 3, Random = 4 };

struct LaunchState;

struct Block {
    uint3 bid{0, 0, 0};
    dim3 bdim, gdim;
    int n = 0, at_barrier = 0, done = 0;
    Fiber** fibers = nullptr;
    Warp* warps = nullptr;
    LaunchState* launch = nullptr;
    void* sched_sp = nullptr;
    Schedule schedule = Schedule::RoundRobin;
    uint64_t ready[16] = {};  // bit i: thread i can run
    uint64_t alive[16] = {};  // bit i: thread i has not returned
    const char* bar_file = nullptr;  // the barrier the first waiting thread called
    int bar_line = 0, bar_first = -1;
    uint64_t rng = 0;
    bool failed = false;
    const void* sched_stack_bottom = nullptr;  // ASan: the worker's own stack
    size_t sched_stack_size = 0;
    void* sched_fake_stack = nullptr;
#if !defined(ICET_EMU_FAST_SWITCH)
    ucontext_t sched_ctx;
#endif
    void set_ready(int i) { ready[i >> 6] |= 1ull << (i & 63); }
    void clear_ready(int i) { ready[i >> 6] &= ~(1ull << (i & 63)); }
    // The first ready thread at or after `from` (-1 if none).
    int next_ready(int from) const {
        for (int w = from >> 6; w < 16; ++w) {
            uint64_t bits = ready[w];
            if (w == from >> 6) bits &= ~0ull << (from & 63);
            if (bits) return w * 64 + __builtin_ctzll(bits);
        }
        return -1;
    }
    // The last ready thread at or before `from` (-1 if none).
    int prev_ready(int from) const {
        for (int w = from >> 6; w >= 0; --w) {
            uint64_t bits = ready[w];
            if (w == from >> 6 && (from & 63) != 63) bits &= (1ull << ((from & 63) + 1)) - 1;
            if (bits) return w * 64 + 63 - __builtin_clzll(bits);
        }
        return -1;
    }
};

struct LaunchState {
    const Kernel* kernel;
    dim3 grid, block;
    size_t dyn_smem;
    void** args;
    Schedule schedule;
    uint64_t seed;
    long long total;
    std::atomic<long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex err_mu;
    std::string error;
};

// The block the calling OS thread is running, for the fault handler. A pthread key, not a
// thread_local: reading it from a signal handler on a thread that never ran a block must not
// allocate this library's (large, dynamically allocated) TLS block.
static pthread_key_t g_running_key;
static pthread_once_t g_running_once = PTHREAD_ONCE_INIT;
static void make_running_key() { pthread_key_create(&g_running_key, nullptr); }
static inline void set_running(Block* b) {
    pthread_once(&g_running_once, make_running_key);
    pthread_setspecific(g_running_key, b);
}
static inline Block* running() {
    pthread_once(&g_running_once, make_running_key);
    return static_cast<Block*>(pthread_getspecific(g_running_key));
}

static void set_error(LaunchState* l, const std::string& msg) {
    std::lock_guard<std::mutex> g(l->err_mu);
    if (!l->failed.load()) {
        l->error = msg;
        l->failed.store(true);
    }
}

static std::string vformat(const char* fmt, va_list ap) {
    char buf[2048];
    vsnprintf(buf, sizeof buf, fmt, ap);
    return buf;
}

static std::string vformat_s(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static std::string vformat_s(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

static const char* kind_name(char k) {
    switch (k) {
        case 'p': return "pointer";
        case 'i': return "int (32-bit)";
        case 'u': return "unsigned int (32-bit)";
        case 'l': return "long long (64-bit)";
        case 'L': return "unsigned long long (64-bit)";
        case 'f': return "float";
        case 'd': return "double";
        default: return "parameter of unknown kind";
    }
}

static std::string where(const Block* b, const Fiber* f) {
    char buf[160];
    if (f)
        snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u): ", b->bid.x, b->bid.y, b->bid.z, f->tid.x,
                 f->tid.y, f->tid.z);
    else
        snprintf(buf, sizeof buf, "block (%u,%u,%u): ", b->bid.x, b->bid.y, b->bid.z);
    return buf;
}

// ---- fiber switching -----------------------------------------------------------------------------------
// A thread that blocks (or returns) hands the worker straight to the next ready thread of its
// schedule — one switch, not two through a scheduler loop. Only when no thread is ready (the
// block is done, deadlocked or failed) does control go back to run_block.

static inline uint64_t next_random(uint64_t& s) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    return s;
}

// The thread to run after thread `cur` (-1: the block's first pick); -1 when none is ready.
static inline int pick_next(Block* b, int cur) {
    const int n = b->n;
    int k = -1;
    switch (b->schedule) {
        case Schedule::RoundRobin:  // the next ready thread after `cur`, wrapping to a new sweep
            k = cur + 1 < n ? b->next_ready(cur + 1) : -1;
            if (k < 0) k = b->next_ready(0);
            break;
        case Schedule::Reverse:
            k = cur > 0 ? b->prev_ready(cur - 1) : -1;
            if (k < 0) k = b->prev_ready(n - 1);
            break;
        case Schedule::Greedy:  // always the lowest ready thread: one warp runs ahead of the others
            k = b->next_ready(0);
            break;
        case Schedule::GreedyReverse:
            k = b->prev_ready(n - 1);
            break;
        case Schedule::Random:
            k = b->next_ready((int)(next_random(b->rng) % (uint64_t)n));
            if (k < 0) k = b->next_ready(0);
            break;
    }
    return k;
}

static inline void jump(void** save, Fiber* from, void* to_sp, const void* to_lo, size_t to_size, bool final) {
#ifdef ICET_EMU_ASAN
    __sanitizer_start_switch_fiber(final ? nullptr : &from->fake_stack, to_lo, to_size);
#else
    (void)from, (void)to_lo, (void)to_size, (void)final;
#endif
#if defined(ICET_EMU_FAST_SWITCH)
    icet_emu_switch(save, to_sp);
#else
    swapcontext(reinterpret_cast<ucontext_t*>(*save), reinterpret_cast<ucontext_t*>(to_sp));
#endif
#ifdef ICET_EMU_ASAN
    __sanitizer_finish_switch_fiber(from->fake_stack, nullptr, nullptr);
#endif
}

// Leaves thread `f` (blocked, returned for good with `final`, or still ready after releasing a
// barrier) for the next one its schedule picks, or for run_block.
static inline void switch_away(Fiber* f, bool final) {
    Block* b = f->block;
    const bool stop = b->failed || b->launch->failed.load(std::memory_order_relaxed);
    const int k = stop ? -1 : pick_next(b, f->lin);
    if (k == f->lin) return;  // it is its own successor: keep running
    if (k >= 0) {
        Fiber* next = b->fibers[k];
        jump(&f->sp, f, next->sp, next->stack_lo, next->stack_size, final);
    } else {
#if defined(ICET_EMU_FAST_SWITCH)
        jump(&f->sp, f, b->sched_sp, b->sched_stack_bottom, b->sched_stack_size, final);
#else
        jump(&f->sp, f, &b->sched_ctx, b->sched_stack_bottom, b->sched_stack_size, final);
#endif
    }
}

static inline void to_scheduler(Fiber* f, bool final) {
    Block* b = f->block;
#if defined(ICET_EMU_FAST_SWITCH)
    jump(&f->sp, f, b->sched_sp, b->sched_stack_bottom, b->sched_stack_size, final);
#else
    jump(&f->sp, f, &b->sched_ctx, b->sched_stack_bottom, b->sched_stack_size, final);
#endif
}

// From run_block: runs the block's threads until none is ready.
static inline void start_block(Block* b, Fiber* first) {
#ifdef ICET_EMU_ASAN
    __sanitizer_start_switch_fiber(&b->sched_fake_stack, first->stack_lo, first->stack_size);
#endif
#if defined(ICET_EMU_FAST_SWITCH)
    icet_emu_switch(&b->sched_sp, first->sp);
#else
    swapcontext(&b->sched_ctx, reinterpret_cast<ucontext_t*>(first->sp));
#endif
#ifdef ICET_EMU_ASAN
    __sanitizer_finish_switch_fiber(b->sched_fake_stack, nullptr, nullptr);
#endif
}

// A failure inside a kernel: record it and leave the fiber for good (its stack is reused by the
// next block; nothing on it needs destroying).
[[noreturn]] static void fail_fiber(Fiber* f, const std::string& msg) {
    Block* b = f->block;
    set_error(b->launch, where(b, f) + msg);
    b->failed = true;
    f->dirty = true;
    to_scheduler(f, true);
    __builtin_trap();  // never resumed
}


void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string msg = vformat(fmt, ap);
    va_end(ap);
    fail_fiber(self(), msg);
}


// Waits at a barrier that every live thread of the block must reach at the same call site; the
// last to arrive releases it. (Sites are compared as they arrive, so a divergent barrier is named
// by the first thread that calls a different one.)
void syncthreads(const char* file, int line) {
    Fiber* f = self();
    Block* b = f->block;
    if (b->bar_first < 0) {
        b->bar_file = file, b->bar_line = line, b->bar_first = f->lin;
    } else if (b->bar_line != line || b->bar_file != file) {
        fail_fiber(f, vformat_s("divergent __syncthreads: this thread waits at %s:%d, thread %d at %s:%d", file, line,
                                b->bar_first, b->bar_file, b->bar_line));
    }
    f->bar_file = file;
    f->bar_line = line;
    if (++b->at_barrier + b->done < b->n) {
        f->st = St::Barrier;
        b->clear_ready(f->lin);
        switch_away(f, false);
        f->st = St::Runnable;
        return;
    }
    if (b->done > 0)
        fail_fiber(f, vformat_s("__syncthreads at %s:%d is waited on while %d threads of the block have already "
                                "returned (undefined behaviour on a GPU)",
                                file, line, b->done));
    // Release: every thread not returned is waiting here; all become ready, this one yields so
    // that the schedule, not the arrival order, decides who runs first.
    b->at_barrier = 0;
    b->bar_first = -1;
    for (int w = 0; w < 16; ++w) b->ready[w] = b->alive[w];
    switch_away(f, false);
}

void warp_collective(Coll* a) {
    Fiber* f = self();
    Block* b = f->block;
    Warp& w = *f->warp_of;
    const int lane = f->lane;
    const unsigned bit = 1u << lane, mask = a->mask;
    if (!(mask & bit))
        fail_fiber(f, vformat_s("%s at %s:%d: the calling lane %d is not in the mask %#x", a->what, a->file, a->line,
                                lane, mask));
    if (mask & ~w.existing)
        fail_fiber(f, vformat_s("%s at %s:%d: mask %#x names lanes this warp does not have (block of %d threads)",
                                a->what, a->file, a->line, mask, b->n));
    w.args[lane] = a;
    w.what[lane] = a->what, w.file[lane] = a->file, w.line[lane] = a->line, w.mask[lane] = mask, w.key[lane] = a->key;
    w.arrived |= bit;
    if ((w.arrived & mask) != mask) {
        f->coll = a;
        f->st = St::WarpWait;
        b->clear_ready(f->lin);
        switch_away(f, false);
        f->st = St::Runnable;
        f->coll = nullptr;
        return;
    }
    // The last lane of the mask: the others must be waiting in this very collective.
    for (unsigned m = mask; m; m &= m - 1) {
        const int l = __builtin_ctz(m);
        if (w.line[l] == a->line && w.file[l] == a->file && w.what[l] == a->what && w.mask[l] == mask &&
            w.key[l] == a->key)
            continue;
        if (w.line[l] != a->line || w.file[l] != a->file || w.what[l] != a->what)
            fail_fiber(f, vformat_s("warp divergence: lane %d is in %s (%s:%d) while lane %d is in %s (%s:%d)", l,
                                    w.what[l], w.file[l], w.line[l], lane, a->what, a->file, a->line));
        if (w.mask[l] != mask)
            fail_fiber(f, vformat_s("%s (%s:%d): lanes %d and %d disagree on the mask (%#x vs %#x)", a->what, a->file,
                                    a->line, l, lane, w.mask[l], mask));
        fail_fiber(f, vformat_s("%s (%s:%d): lanes %d and %d pass different pointer/ldm/layout arguments (they must "
                                "be warp-uniform)",
                                a->what, a->file, a->line, l, lane));
    }
    a->op(w, mask);
    w.arrived &= ~mask;
    // Wake the other lanes (the warp is 32 aligned bits of the ready map).
    b->ready[f->warp >> 1] |= (uint64_t)(mask & ~bit) << (32 * (f->warp & 1));
}

// ---- the per-thread fiber pool ---------------------------------------------------------------------------
static size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

struct Pool {
    char* slab = nullptr;  // kRegion-aligned reservation for kMaxThreads regions
    size_t slab_len = 0;
    char* slab_map = nullptr;
    int committed = 0;
    Fiber* fibers[1024];
    Warp warps[32];
    std::vector<char> sched_stack;  // (ucontext fallback only)

    static constexpr int kMaxThreads = 1024;

    Pool() {
        slab_len = kRegion * kMaxThreads;
        const size_t map_len = slab_len + kRegion;
        void* m = mmap(nullptr, map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "icet-emu: cannot reserve %zu bytes for fiber stacks: %s\n", map_len, strerror(errno));
            abort();
        }
        slab_map = static_cast<char*>(m);
        slab = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(m) + kRegion - 1) & ~(kRegion - 1));
    }
    ~Pool() { munmap(slab_map, slab_len + kRegion); }

    // Makes regions 0..n usable: everything but each region's first page (its guard).
    bool commit(int n) {
        const size_t pg = page_size();
        for (int i = committed; i < n; ++i) {
            char* r = slab + (size_t)i * kRegion;
            if (mprotect(r + pg, kRegion - pg, PROT_READ | PROT_WRITE) != 0) return false;
            Fiber* f = fiber_at(r);
            new (f) Fiber{};
            f->stack_lo = r + pg;
            f->stack_size = kRegion - pg - kFiberHeader;
            fibers[i] = f;
            ++committed;
        }
        return true;
    }
};

static thread_local std::unique_ptr<Pool> tls_pool;

// Lays out a new fiber's stack so that the first switch to it enters icet_emu_fiber_main(f).
static void init_stack(Fiber* f) {
#if defined(ICET_EMU_FAST_SWITCH)
    uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack_lo) + f->stack_size) & ~uintptr_t(15);
    uint64_t* s = reinterpret_cast<uint64_t*>(top);
    s[-1] = reinterpret_cast<uint64_t>(&icet_emu_fiber_start);  // return address of the switch
    s[-2] = 0;                                                 // rbp
    s[-3] = 0;                                                 // rbx
    s[-4] = reinterpret_cast<uint64_t>(f);                     // r12 → fiber_start's argument
    s[-5] = 0;                                                 // r13
    s[-6] = 0;                                                 // r14
    s[-7] = 0;                                                 // r15
    // MXCSR (round to nearest, all exceptions masked) and the x87 control word.
    const uint64_t mxcsr = 0x1F80, fpucw = 0x037F;
    s[-8] = mxcsr | (fpucw << 32);
    f->sp = &s[-8];
#else
    static thread_local std::vector<ucontext_t> ctxs(Pool::kMaxThreads);
    ucontext_t* c = &ctxs[f->lin];
    getcontext(c);
    c->uc_stack.ss_sp = f->stack_lo;
    c->uc_stack.ss_size = f->stack_size;
    c->uc_link = nullptr;
    makecontext(c, (void (*)())icet_emu_fiber_main, 1, f);
    f->sp = c;
#endif
}

extern "C" void icet_emu_fiber_main(Fiber* f) {
    Block* b = f->block;
#ifdef ICET_EMU_ASAN
    // The first thread is entered from run_block: learn the worker's stack, to switch back to.
    const void* bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
    if (!b->sched_stack_bottom) b->sched_stack_bottom = bottom, b->sched_stack_size = size;
#endif
    b->launch->kernel->call(b->launch->args);
    f->st = St::Done;
    ++b->done;
    b->clear_ready(f->lin);
    b->alive[f->lin >> 6] &= ~(1ull << (f->lin & 63));
    if (b->at_barrier > 0 && b->at_barrier + b->done == b->n)
        fail_fiber(f, vformat_s("returned while %d threads of the block wait at __syncthreads (%s:%d) (undefined "
                                "behaviour on a GPU)",
                                b->at_barrier, b->bar_file, b->bar_line));
    switch_away(f, true);
    __builtin_trap();
}

static std::string deadlock_report(Block* b) {
    std::string s = vformat_s("deadlock: %d of %d threads returned, %d wait at __syncthreads, none can run:", b->done,
                              b->n, b->at_barrier);
    int shown = 0;
    for (int i = 0; i < b->n && shown < 12; ++i) {
        const Fiber* f = b->fibers[i];
        if (f->st == St::Barrier)
            s += vformat_s(" thread %d at __syncthreads (%s:%d);", f->lin, f->bar_file, f->bar_line), ++shown;
        else if (f->st == St::WarpWait)
            s += vformat_s(" thread %d (warp %d lane %d) in %s (%s:%d, mask %#x);", f->lin, f->warp, f->lane,
                           f->coll->what, f->coll->file, f->coll->line, f->coll->mask),
                ++shown;
    }
    s += " (a barrier or warp collective that not every named thread reaches: a divergent __syncthreads, an early "
         "return, or a lane that left before a full-mask shuffle)";
    return s;
}

// Runs every thread of `b` to completion under its schedule; false if the launch failed.
static bool run_block(Block& b) {
    const int n = b.n;
    for (int i = 0; i < n; ++i) {
        Fiber* f = b.fibers[i];
#ifdef ICET_EMU_ASAN
        if (f->dirty) ASAN_UNPOISON_MEMORY_REGION(f->stack_lo, f->stack_size);
#endif
        f->dirty = false;
        f->st = St::Runnable;
        f->coll = nullptr;
        f->block = &b;
        f->bid = &b.bid, f->bdim = &b.bdim, f->gdim = &b.gdim;
        f->warp_of = &b.warps[i >> 5];
        init_stack(f);
    }
    for (int w = 0; w < (n + 31) / 32; ++w) b.warps[w].arrived = 0;
    for (int w = 0; w < 16; ++w) {
        const int lo = w * 64;
        b.alive[w] = b.ready[w] = n >= lo + 64 ? ~0ull : n > lo ? (1ull << (n - lo)) - 1 : 0;
    }
    b.at_barrier = 0;
    b.done = 0;
    b.bar_first = -1;
    b.failed = false;
    set_running(&b);
    const int first = pick_next(&b, -1);
    start_block(&b, b.fibers[first]);
    bool ok = !b.failed && !b.launch->failed.load(std::memory_order_relaxed);
    if (ok && b.done < n) {
        set_error(b.launch, where(&b, nullptr) + deadlock_report(&b));
        ok = false;
    }
    set_running(nullptr);
    if (!ok) {
        for (int i = 0; i < n; ++i)
            if (b.fibers[i]->st != St::Done) b.fibers[i]->dirty = true;
    }
    return ok;
}

// The 0x7FFF pattern past the launch's dynamic shared memory: NaN in f32, bf16 and f16, and not
// the 0xFF poison inside it, so a write past the size the launcher asked for is told apart.
static void fill_canary(unsigned char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) p[i] = (i & 1) ? 0x7F : 0xFF;
}
static long find_canary_damage(const unsigned char* p, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (p[i] != ((i & 1) ? 0x7F : 0xFF)) return (long)i;
    return -1;
}

static void run_blocks(LaunchState* l) {
    if (!tls_pool) tls_pool.reset(new Pool());
    Pool& pool = *tls_pool;
    const int n = (int)(l->block.x * l->block.y * l->block.z);
    if (!pool.commit(n)) {
        set_error(l, "cannot commit memory for the fiber stacks");
        return;
    }
    Block b;
    b.bdim = l->block;
    b.gdim = l->grid;
    b.n = n;
    b.fibers = pool.fibers;
    b.warps = pool.warps;
    b.launch = l;
    b.schedule = l->schedule;
    for (int w = 0; w < 32; ++w) b.warps[w].existing = 0;
    for (int i = 0; i < n; ++i) {
        Fiber* f = pool.fibers[i];
        f->lin = i;
        f->tid = uint3{(unsigned)(i % l->block.x), (unsigned)(i / l->block.x % l->block.y),
                       (unsigned)(i / (l->block.x * l->block.y))};
        f->lane = i & 31;
        f->warp = i >> 5;
        b.warps[f->warp].existing |= 1u << f->lane;
    }
    unsigned char* smem = l->kernel->dyn_smem ? l->kernel->dyn_smem() : nullptr;
    const long long gx = l->grid.x, gxy = (long long)l->grid.x * l->grid.y;
    long long i;
    while (!l->failed.load(std::memory_order_relaxed) && (i = l->next.fetch_add(1)) < l->total) {
        b.bid = uint3{(unsigned)(i % gx), (unsigned)(i / gx % l->grid.y), (unsigned)(i / gxy)};
        b.rng = (l->seed ^ (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull) | 1;
        if (smem) {
#ifdef ICET_EMU_ASAN
            ASAN_UNPOISON_MEMORY_REGION(smem, kDynSmemCap + kDynSmemCanary);
#endif
            memset(smem, 0xFF, l->dyn_smem);  // uninitialised shared memory reads as NaN
            fill_canary(smem + l->dyn_smem, kDynSmemCanary);
#ifdef ICET_EMU_ASAN
            ASAN_POISON_MEMORY_REGION(smem + l->dyn_smem, kDynSmemCap + kDynSmemCanary - l->dyn_smem);
#endif
        }
        if (!run_block(b)) break;
        if (smem) {
#ifdef ICET_EMU_ASAN
            ASAN_UNPOISON_MEMORY_REGION(smem, kDynSmemCap + kDynSmemCanary);
#endif
            const long at = find_canary_damage(smem + l->dyn_smem, kDynSmemCanary);
            if (at >= 0) {
                set_error(l, where(&b, nullptr) +
                                 vformat_s("wrote dynamic shared memory at byte %zu, past the %zu bytes the launch "
                                           "provides (does the launcher size the shared memory as the kernel lays it out?)",
                                           l->dyn_smem + (size_t)at, l->dyn_smem));
                break;
            }
        }
    }
}

// ---- workers ------------------------------------------------------------------------------------------------
struct Workers {
    std::mutex launch_mu;  // one launch at a time, whichever emulated device asks
    std::mutex mu;
    std::condition_variable cv, done_cv;
    std::vector<std::thread> threads;
    LaunchState* job = nullptr;
    uint64_t generation = 0;
    int wanted = 0;   // pool threads that should take part in the current job
    int running = 0;  // pool threads still working on it

    void ensure(int n) {
        while ((int)threads.size() < n) {
            const int id = (int)threads.size();
            threads.emplace_back([this, id] { loop(id); });
            threads.back().detach();
        }
    }
    void loop(int id) {
        uint64_t seen = 0;
        for (;;) {
            LaunchState* l;
            {
                std::unique_lock<std::mutex> g(mu);
                cv.wait(g, [&] { return generation != seen && id < wanted; });
                seen = generation;
                l = job;
            }
            run_blocks(l);
            {
                std::lock_guard<std::mutex> g(mu);
                if (--running == 0) done_cv.notify_all();
            }
        }
    }
    // Runs the launch on the calling thread and `extra` pool threads.
    void run(LaunchState* l, int extra) {
        std::lock_guard<std::mutex> one(launch_mu);
        if (extra > 0) {
            std::lock_guard<std::mutex> g(mu);
            ensure(extra);
            job = l;
            wanted = extra;
            running = extra;
            ++generation;
            cv.notify_all();
        }
        run_blocks(l);
        if (extra > 0) {
            std::unique_lock<std::mutex> g(mu);
            done_cv.wait(g, [&] { return running == 0; });
            wanted = 0;
        }
    }
};
static Workers* workers() {
    static Workers* w = new Workers();  // never destroyed: its threads live as long as the process
    return w;
}

// ---- device memory ------------------------------------------------------------------------------------------
struct Alloc {
    size_t bytes;      // as requested
    size_t rounded;    // to 256 bytes: the slack [bytes, rounded) is 0xFF and checked
    char* map;         // the mapping (or ASan allocation) holding it
    size_t map_len;
};
static std::mutex g_alloc_mu;
static std::map<uintptr_t, Alloc> g_allocs;
static size_t g_allocated = 0;
static std::string g_sticky;  // an error found outside a launch (at free), reported by the next call

static bool find_alloc(uintptr_t p, uintptr_t* base, Alloc* a) {
    auto it = g_allocs.upper_bound(p);
    if (it == g_allocs.begin()) return false;
    --it;
    if (p >= it->first + it->second.rounded) return false;
    *base = it->first;
    *a = it->second;
    return true;
}

static long slack_damage(uintptr_t base, const Alloc& a) {
#ifdef ICET_EMU_ASAN
    // The slack is poisoned: ASan itself reports any kernel access to it.
    (void)base, (void)a;
    return -1;
#endif
    const unsigned char* p = reinterpret_cast<const unsigned char*>(base);
    for (size_t i = a.bytes; i < a.rounded; ++i)
        if (p[i] != 0xFF) return (long)i;
    return -1;
}

// ---- the fault handler (a kernel touching memory outside every buffer) ---------------------------------------
static struct sigaction g_old_segv, g_old_bus;

[[maybe_unused]] static void fault_handler(int sig, siginfo_t* si, void* uctx) {
    Block* b = running();
    if (b) {
        char msg[1024];
        int len = 0;
        const uintptr_t addr = reinterpret_cast<uintptr_t>(si->si_addr);
        const Kernel* k = b->launch->kernel;
        Fiber* f = nullptr;
#if defined(__x86_64__)
        const uintptr_t sp = (uintptr_t) static_cast<ucontext_t*>(uctx)->uc_mcontext.gregs[REG_RSP];
        if (tls_pool && sp >= (uintptr_t)tls_pool->slab && sp < (uintptr_t)tls_pool->slab + tls_pool->slab_len)
            f = fiber_at(reinterpret_cast<void*>(sp & ~(kRegion - 1)));
#endif
        len += snprintf(msg + len, sizeof msg - len, "icet-emu: kernel %s (%s) block (%u,%u,%u)", k->name, k->file,
                        b->bid.x, b->bid.y, b->bid.z);
        if (f)
            len += snprintf(msg + len, sizeof msg - len, " thread (%u,%u,%u)", f->tid.x, f->tid.y, f->tid.z);
        len += snprintf(msg + len, sizeof msg - len, ": invalid memory access at %p", si->si_addr);
        if (tls_pool && addr >= (uintptr_t)tls_pool->slab && addr < (uintptr_t)tls_pool->slab + tls_pool->slab_len &&
            (addr & (kRegion - 1)) < page_size())
            len += snprintf(msg + len, sizeof msg - len,
                            " — the guard page of an emulated thread's stack: a stack overflow (%zu KiB per thread)",
                            (size_t)(kRegion / 1024));
        else if (g_alloc_mu.try_lock()) {
            // The nearest buffer below the address.
            auto it = g_allocs.upper_bound(addr);
            if (it != g_allocs.begin()) {
                --it;
                const uintptr_t end = it->first + it->second.bytes;
                if (addr >= end && addr - end < (1u << 20))
                    len += snprintf(msg + len, sizeof msg - len,
                                    " — %zu bytes past the end of a %zu-byte device buffer at %p", (size_t)(addr - end),
                                    it->second.bytes, (void*)it->first);
            }
            g_alloc_mu.unlock();
        }
        len += snprintf(msg + len, sizeof msg - len, " (a missing bounds check in the kernel, or a launcher passing "
                                                     "a buffer smaller than the shape it launches)\n");
        if (write(2, msg, (size_t)len) < 0) {
        }
        abort();
    }
    // Not ours: hand it on (Rust's stack-overflow handler, or the default action).
    const struct sigaction& old = sig == SIGBUS ? g_old_bus : g_old_segv;
    if (old.sa_flags & SA_SIGINFO) {
        if (old.sa_sigaction) {
            old.sa_sigaction(sig, si, uctx);
            return;
        }
    } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
        old.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL);  // re-raised by the faulting instruction when we return
}

static void install_fault_handler() {
#ifndef ICET_EMU_ASAN  // ASan reports faults itself
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = fault_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
    });
#endif
}

// A stack for the fault handler on every thread that runs blocks (a fiber's own may be the one
// that overflowed). Rust threads already have one; keep it.
static void ensure_altstack() {
#ifndef ICET_EMU_ASAN
    static thread_local bool done = false;
    if (done) return;
    done = true;
    stack_t old;
    if (sigaltstack(nullptr, &old) == 0 && !(old.ss_flags & SS_DISABLE) && old.ss_size >= 8192) return;
    static thread_local std::vector<char> alt(64 * 1024);
    stack_t ss;
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    ss.ss_flags = 0;
    sigaltstack(&ss, nullptr);
#endif
}

// ---- the kernel registry ----------------------------------------------------------------------------------------
}  // namespace icet_emu

extern "C" const icet_emu::Module* const icet_emu_modules[];  // generated by build.rs (registry.cpp)

namespace icet_emu {

struct KernelRef {
    const Kernel* k;
    std::atomic<size_t> max_dyn{48 * 1024};  // cudaFuncAttributeMaxDynamicSharedMemorySize
};
struct KernelTable {
    KernelRef* refs;
    size_t count;
    size_t size() const { return count; }
    KernelRef& operator[](size_t i) const { return refs[i]; }
};
static const KernelTable& kernels() {
    static const KernelTable t = [] {
        size_t n = 0;
        for (const Module* const* m = icet_emu_modules; *m; ++m) n += (size_t)(*m)->count;
        KernelTable t{new KernelRef[n], n};
        size_t j = 0;
        for (const Module* const* m = icet_emu_modules; *m; ++m)
            for (int i = 0; i < (*m)->count; ++i) t.refs[j++].k = &(*m)->kernels[i];
        return t;
    }();
    return t;
}

static void put_error(char* err, size_t errlen, const std::string& msg) {
    if (!err || errlen == 0) return;
    const size_t n = std::min(errlen - 1, msg.size());
    memcpy(err, msg.data(), n);
    err[n] = 0;
}

static bool take_sticky(char* err, size_t errlen) {
    std::lock_guard<std::mutex> g(g_alloc_mu);
    if (g_sticky.empty()) return false;
    put_error(err, errlen, g_sticky);
    g_sticky.clear();
    return true;
}

}  // namespace icet_emu

// ---- the C ABI -------------------------------------------------------------------------------------------------------
using namespace icet_emu;

struct icet_emu_options {
    int schedule;  // Schedule
    int workers;   // OS threads for a launch, >= 1
    uint64_t seed;  // Schedule::Random
};

EXPORT int icet_emu_abi_version() { return ICET_EMU_ABI; }

EXPORT int icet_emu_sanitized() {
#ifdef ICET_EMU_ASAN
    return 1;
#else
    return 0;
#endif
}

EXPORT int icet_emu_kernel_count() { return (int)kernels().size(); }

EXPORT const char* icet_emu_kernel_name(int i) {
    auto& ks = kernels();
    return i >= 0 && i < (int)ks.size() ? ks[i].k->name : nullptr;
}

EXPORT int icet_emu_find_kernel(const char* name) {
    auto& ks = kernels();
    for (size_t i = 0; i < ks.size(); ++i)
        if (!strcmp(ks[i].k->name, name)) return (int)i;
    return -1;
}

// cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
EXPORT int icet_emu_set_max_dynamic_shared(int kernel, size_t bytes, char* err, size_t errlen) {
    auto& ks = kernels();
    if (kernel < 0 || kernel >= (int)ks.size()) return put_error(err, errlen, "no such kernel"), 1;
    if (bytes > kDynSmemCap)
        return put_error(err, errlen,
                         vformat_s("%s: %zu bytes of dynamic shared memory exceed the device's opt-in limit of %zu",
                                   ks[kernel].k->name, bytes, kDynSmemCap)),
               1;
    ks[kernel].max_dyn.store(bytes);
    return 0;
}

EXPORT int icet_emu_launch(int kernel, const unsigned* grid, const unsigned* block, size_t dyn_smem, void** args,
                           const char* kinds, int nargs, const icet_emu_options* opt, char* err, size_t errlen) {
    if (take_sticky(err, errlen)) return 1;
    auto& ks = kernels();
    if (kernel < 0 || kernel >= (int)ks.size()) return put_error(err, errlen, "no such kernel"), 1;
    const Kernel* k = ks[kernel].k;
    auto bad = [&](const std::string& m) {
        put_error(err, errlen, m);
        return 1;
    };
    // What cuLaunchKernel would refuse.
    const unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (threads < 1 || threads > 1024 || block[0] > 1024 || block[1] > 1024 || block[2] > 64)
        return bad(vformat_s("invalid block (%u,%u,%u) (CUDA_ERROR_INVALID_VALUE)", block[0], block[1], block[2]));
    if ((int)threads > k->max_threads)
        return bad(vformat_s("block of %llu threads exceeds the kernel's __launch_bounds__(%d) "
                             "(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)",
                             threads, k->max_threads));
    if (grid[0] < 1 || grid[1] < 1 || grid[2] < 1 || grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535)
        return bad(vformat_s("invalid grid (%u,%u,%u) (CUDA_ERROR_INVALID_VALUE)", grid[0], grid[1], grid[2]));
    const size_t limit = ks[kernel].max_dyn.load();
    if (dyn_smem > limit)
        return bad(vformat_s("%zu bytes of dynamic shared memory, but the kernel allows %zu (opt in with "
                             "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES first) (CUDA_ERROR_INVALID_VALUE)",
                             dyn_smem, limit));
    // The parameter list the launcher built against the kernel's signature (on a GPU, a mismatch
    // is read as garbage without an error).
    if (nargs != k->params)
        return bad(vformat_s("the launcher passes %d arguments, the kernel (%s) takes %d", nargs, k->file, k->params));
    for (int i = 0; i < nargs; ++i)
        if (kinds[i] != k->kinds[i])
            return bad(vformat_s("argument %d: the launcher passes a%s %s, the kernel's parameter is a%s %s", i,
                                 kinds[i] == 'i' || kinds[i] == 'u' ? "n" : "", kind_name(kinds[i]),
                                 k->kinds[i] == 'i' || k->kinds[i] == 'u' ? "n" : "", kind_name(k->kinds[i])));
    // Every pointer argument must be null or point into a live buffer.
    std::vector<std::pair<uintptr_t, Alloc>> touched;
    {
        std::lock_guard<std::mutex> g(g_alloc_mu);
        for (int i = 0; i < nargs; ++i) {
            if (kinds[i] != 'p') continue;
            const uintptr_t p = *static_cast<uintptr_t*>(args[i]);
            if (!p) continue;
            uintptr_t base;
            Alloc a;
            if (!find_alloc(p, &base, &a))
                return bad(vformat_s("argument %d (%#lx) points into no live device buffer", i, (unsigned long)p));
            touched.emplace_back(base, a);
        }
    }
    install_fault_handler();
    ensure_altstack();

    LaunchState l;
    l.kernel = k;
    l.grid = dim3(grid[0], grid[1], grid[2]);
    l.block = dim3(block[0], block[1], block[2]);
    l.dyn_smem = dyn_smem;
    l.args = args;
    l.schedule = static_cast<Schedule>(opt->schedule);
    l.seed = opt->seed;
    l.total = (long long)grid[0] * grid[1] * grid[2];
    const long long extra = std::min<long long>(std::max(1, opt->workers), l.total) - 1;
    workers()->run(&l, (int)extra);
    if (l.failed.load()) return bad(l.error);
    // Writes into the slack after a buffer the launch was given.
    for (auto& [base, a] : touched) {
        const long at = slack_damage(base, a);
        if (at >= 0)
            return bad(vformat_s("wrote byte %ld of a %zu-byte device buffer (%zu bytes past its end)", at, a.bytes,
                                 (size_t)at - a.bytes));
    }
    return 0;
}

EXPORT int icet_emu_alloc(size_t bytes, void** out, char* err, size_t errlen) {
    if (take_sticky(err, errlen)) return 1;
    const size_t rounded = std::max<size_t>(256, (bytes + 255) & ~size_t(255));
    Alloc a;
    a.bytes = bytes;
    a.rounded = rounded;
    char* base;
#ifdef ICET_EMU_ASAN
    void* p = nullptr;
    if (posix_memalign(&p, 256, rounded) != 0)
        return put_error(err, errlen, vformat_s("out of host memory for a %zu-byte buffer", bytes)), 2;
    base = static_cast<char*>(p);
    a.map = base;
    a.map_len = rounded;
    // ASan poisons exactly past `rounded`; poison the slack too so reads of it are reported.
    memset(base, 0xFF, rounded);
    ASAN_POISON_MEMORY_REGION(base + bytes, rounded - bytes);
#else
    const size_t pg = page_size();
    const size_t data = (rounded + pg - 1) & ~(pg - 1);
    void* m = mmap(nullptr, data + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return put_error(err, errlen, vformat_s("cannot map %zu bytes: %s", data + pg, strerror(errno))), 2;
    char* map = static_cast<char*>(m);
    if (mprotect(map + data, pg, PROT_NONE) != 0) {
        munmap(map, data + pg);
        return put_error(err, errlen, vformat_s("mprotect failed: %s", strerror(errno))), 2;
    }
    base = map + (data - rounded);  // the rounded end abuts the guard page
    a.map = map;
    a.map_len = data + pg;
    memset(base, 0xFF, rounded);
#endif
    {
        std::lock_guard<std::mutex> g(g_alloc_mu);
        g_allocs.emplace(reinterpret_cast<uintptr_t>(base), a);
        g_allocated += bytes;
    }
    *out = base;
    return 0;
}

EXPORT void icet_emu_free(void* p) {
    if (!p) return;
    Alloc a;
    {
        std::lock_guard<std::mutex> g(g_alloc_mu);
        auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
        if (it == g_allocs.end()) {
            g_sticky = vformat_s("free of %p, which is not the start of a live device buffer", p);
            return;
        }
        a = it->second;
        const long at = slack_damage(it->first, a);
#ifdef ICET_EMU_ASAN
        ASAN_UNPOISON_MEMORY_REGION(a.map, a.rounded);
#endif
        if (at >= 0 && g_sticky.empty())
            g_sticky = vformat_s("a kernel wrote byte %ld of a %zu-byte device buffer (%zu bytes past its end), found "
                                 "when it was freed",
                                 at, a.bytes, (size_t)at - a.bytes);
        g_allocated -= a.bytes;
        g_allocs.erase(it);
    }
#ifdef ICET_EMU_ASAN
    free(a.map);
#else
    munmap(a.map, a.map_len);
#endif
}

// 0 when [p, p + bytes) lies inside one live buffer (what a cuMemcpy on the real device needs).
EXPORT int icet_emu_check_range(const void* p, size_t bytes, char* err, size_t errlen) {
    if (take_sticky(err, errlen)) return 1;
    std::lock_guard<std::mutex> g(g_alloc_mu);
    uintptr_t base;
    Alloc a;
    const uintptr_t q = reinterpret_cast<uintptr_t>(p);
    if (!find_alloc(q, &base, &a))
        return put_error(err, errlen, vformat_s("address %p is in no live device buffer", p)), 1;
    if (q + bytes > base + a.bytes)
        return put_error(err, errlen,
                         vformat_s("%zu bytes at %p run %zu bytes past the end of a %zu-byte device buffer", bytes, p,
                                   (size_t)(q + bytes - base - a.bytes), a.bytes)),
               1;
    return 0;
}

// The error found outside a launch (a write past a buffer, seen when it was freed), if any.
EXPORT int icet_emu_take_error(char* err, size_t errlen) { return take_sticky(err, errlen) ? 1 : 0; }

EXPORT size_t icet_emu_allocated_bytes() {
    std::lock_guard<std::mutex> g(g_alloc_mu);
    return g_allocated;
}
