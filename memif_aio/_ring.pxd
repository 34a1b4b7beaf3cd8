# Declarations of the memif ring core (the extension module memif_aio._ring, built from
# cython_ext/ring.pyx and its parts): the shared-memory layout, atomics and the C structs the
# nogil burst loops work on, then every extension type with its C attributes and methods.
# Cython reads this file as the module's own .pxd (by its qualified name, memif_aio/_ring.pxd).

from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>

    typedef struct {
        uint16_t flags;
        uint16_t region;
        uint32_t length;
        uint32_t offset;
        uint32_t metadata;
    } memif_desc_t;

    _Static_assert(sizeof(memif_desc_t) == 16, "memif descriptor must be 16 bytes");

    static inline uint16_t memif_load_acquire(const uint16_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline void memif_store_release(uint16_t *p, uint16_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline uint16_t memif_load_relaxed(const uint16_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void memif_store_relaxed(uint16_t *p, uint16_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
    }
    /* Full barriers: a receiver that clears MASK_INT and then looks at the ring must not see
       the ring before the flag is visible (else a signal skipped for the old flag is lost). */
    static inline void memif_flags_or(uint16_t *p, uint16_t v) {
        __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
    }
    static inline void memif_flags_and(uint16_t *p, uint16_t v) {
        __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);
    }
    /* The transmitter's half: its published counter is visible before it reads MASK_INT. */
    static inline void memif_fence(void) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
    }
    static inline void memif_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    static inline uint64_t memif_now_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
    }
    /* One read of each field through a volatile pointer: the compiler may not re-load a
       peer-writable descriptor after we validated the copy. */
    static inline void memif_desc_snapshot(const memif_desc_t *src, memif_desc_t *dst) {
        const volatile memif_desc_t *s = (const volatile memif_desc_t *)src;
        dst->flags = s->flags;
        dst->region = s->region;
        dst->length = s->length;
        dst->offset = s->offset;
        dst->metadata = s->metadata;
    }
    """
    ctypedef struct memif_desc_t:
        uint16_t flags
        uint16_t region
        uint32_t length
        uint32_t offset
        uint32_t metadata

    uint16_t memif_load_acquire(const uint16_t *p) noexcept nogil
    void memif_store_release(uint16_t *p, uint16_t v) noexcept nogil
    uint16_t memif_load_relaxed(const uint16_t *p) noexcept nogil
    void memif_store_relaxed(uint16_t *p, uint16_t v) noexcept nogil
    void memif_flags_or(uint16_t *p, uint16_t v) noexcept nogil
    void memif_flags_and(uint16_t *p, uint16_t v) noexcept nogil
    void memif_fence() noexcept nogil
    void memif_cpu_relax() noexcept nogil
    uint64_t memif_now_ns() noexcept nogil
    void memif_desc_snapshot(const memif_desc_t *src, memif_desc_t *dst) noexcept nogil


# The ring header (MEMIF-PROTOCOL.md): cookie u32 @0, flags u16 @4, head u16 @6, tail u16 alone
# on the next cache line, descriptors from the second cache line on.
cdef enum:
    RING_FLAGS_AT = 4
    RING_HEAD_AT = 6

cdef inline uint16_t *ring_flags(char *hdr) noexcept nogil:
    return <uint16_t *>(hdr + RING_FLAGS_AT)

cdef inline uint16_t *ring_head(char *hdr) noexcept nogil:
    return <uint16_t *>(hdr + RING_HEAD_AT)

cdef inline uint16_t *ring_tail(char *hdr, int cacheline) noexcept nogil:
    return <uint16_t *>(hdr + cacheline)

cdef inline memif_desc_t *ring_descs(char *hdr, int cacheline) noexcept nogil:
    return <memif_desc_t *>(hdr + 2 * cacheline)


# Error codes of the nogil loops; the message is built (with the GIL) from ring_err fields.
cdef enum:
    ERR_NONE = 0
    ERR_REGION = 1        # a = region
    ERR_BOUNDS = 2        # a = offset, b = length, c = region, d = region size
    ERR_TOO_LONG = 3      # a = length, b = buffer size
    ERR_CHAIN = 4         # a = ring size
    ERR_CAP_ZERO = 5
    ERR_CAP_BOUNDS = 6    # a = offset, b = capacity, c = region, d = region size
    ERR_PKT_TOO_LONG = 7  # a = length so far, b = max_packet_size
    ERR_PKT_TOO_BIG = 8   # local: a = packet index, b = length, c = descriptors needed, d = size
    ERR_PKT_OVER_MAX = 9  # local: a = packet index, b = length, c = max_packet_size
    ERR_NEVER_FITS = 10   # local: a = packet index, b = length, c = ring capacity, d = size


cdef struct ring_err:
    int code
    uint32_t slot
    uint64_t a
    uint64_t b
    uint64_t c
    uint64_t d


# Everything a receive burst needs, in one C struct so the loop runs without the GIL.
cdef struct rx_ctx:
    char *hdr
    memif_desc_t *descs
    uint32_t size
    uint32_t mask
    bint slave
    uint16_t last          # next counter value to read (tail for slave, head for master)
    char **base
    uint64_t *rsize
    uint32_t nregions
    uint32_t *table        # slave: buffer offset owned by each slot
    uint16_t buffer_region  # slave: the region of its own buffers
    uint32_t buffer_size
    bint skip_empty        # slave with a sentinel: a leading empty NEXT slot is stepped over
    bint short_next        # slave facing DPDK < 23.03: NEXT on a partly filled slot is stale
    uint32_t maxp
    uint64_t max_packet    # longest packet accepted (bytes, chains joined)
    uint32_t avail
    uint32_t n             # out: packets
    uint32_t ndesc         # out: descriptors consumed
    uint64_t nbytes
    uint32_t *first        # per packet: index of its first segment
    uint32_t *lengths
    uint32_t *nsegs
    uint32_t *meta         # per packet: metadata of its first descriptor
    uint16_t *seg_region   # per segment (index = descriptor position in the burst)
    uint32_t *seg_offset
    uint32_t *seg_len
    ring_err err


cdef struct tx_ctx:
    memif_desc_t *descs
    uint32_t size
    uint32_t mask
    bint slave
    uint16_t pos           # our counter: head for slave, tail for master
    uint32_t free
    char **base
    uint64_t *rsize
    uint32_t nregions
    uint32_t *table
    uint16_t buffer_region  # slave: the region of its own buffers
    uint32_t buffer_size
    const char **src
    uint64_t *src_len
    uint32_t *src_meta     # per packet: metadata for each of its descriptors
    uint64_t max_packet    # longest packet we send
    uint32_t npk
    uint16_t *snap_region  # master: validated copies of the peer's empty descriptors
    uint32_t *snap_off
    uint32_t *snap_cap
    uint32_t nsnap
    uint32_t n
    uint32_t ndesc
    uint64_t nbytes
    ring_err err


cdef extern from "memif_signal.h" nogil:
    ctypedef struct memif_uring:
        int fd
    int memif_uring_open(memif_uring *u, unsigned entries)
    void memif_uring_close(memif_uring *u)
    int memif_uring_signal(memif_uring *u, int fd)
    int memif_uring_probe()
    ctypedef struct memif_signal_thread:
        pass
    memif_signal_thread *memif_signal_thread_new(int nslots)
    void memif_signal_thread_set(memif_signal_thread *t, int slot, int fd)
    void memif_signal_thread_post(memif_signal_thread *t, int slot)
    int memif_signal_thread_free(memif_signal_thread *t, int timeout_ms)


# Forward declarations: the classes refer to each other.
cdef class RegionTable
cdef class Ring
cdef class Burst
cdef class RxRing
cdef class TxRing
cdef class Completed
cdef class Signaller


cdef class _U32Array:
    cdef uint32_t *data
    cdef Py_ssize_t n
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]


cdef class RegionTable:
    cdef Py_ssize_t n
    cdef char **base
    cdef uint64_t *sizes
    cdef Py_buffer *bufs
    cdef list _views
    cdef bint _closed
    cdef bint _held         # bufs/_views exports still held
    cdef Py_ssize_t live    # packet views alive (buffer exports of _PacketBuffer)
    cdef int busy
    cdef void _release_exports(self) noexcept
    cdef void _release_views(self) noexcept
    cdef int _check(self) except -1
    cdef object _slice(self, uint16_t region, uint64_t offset, uint64_t length)


cdef class _PacketBuffer:
    cdef RegionTable table
    cdef char *buf
    cdef Py_ssize_t len


cdef class Ring:
    cdef readonly RegionTable regions
    cdef readonly uint16_t region
    cdef readonly uint64_t offset
    cdef readonly uint32_t size
    cdef readonly int log2_size
    cdef readonly int cacheline
    cdef uint32_t mask
    cdef char *_hdr(self) except NULL
    cdef memif_desc_t *_desc(self, Py_ssize_t slot) except NULL


cdef class Burst:
    cdef RxRing rx
    cdef object _lengths_view
    cdef object _nsegs_view
    cdef object _meta_view
    cdef int _check_packet(self, Py_ssize_t *i) except -1


cdef class RxRing:
    cdef readonly Ring ring
    cdef RegionTable regions
    cdef bint slave
    cdef bint closed
    cdef readonly bint sentinel
    cdef readonly bint short_next_ends_packet
    cdef uint32_t limit     # slave: most slots ever published (size, or size - 1 with sentinel)
    cdef uint32_t max_burst
    cdef uint16_t released  # slots before this counter value are back with their owner
    cdef uint16_t head      # slave: what we published; cached, never re-read
    cdef uint16_t bstart    # counter value of the current burst's first descriptor
    cdef uint16_t seen      # the peer's counter as we last loaded it (a receive, pending())
    cdef uint32_t fwd       # packets of the current burst already forwarded
    cdef rx_ctx c
    cdef object _table_arr
    cdef object _lengths_arr
    cdef object _nsegs_arr
    cdef object _meta_arr
    cdef readonly Burst burst
    cdef readonly uint64_t generation  # bumped whenever the burst's contents go away
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes
    cdef readonly uint64_t errors
    cdef int _check_open(self) except -1
    cdef int _set_hdr(self) except -1
    cdef uint32_t _available(self) except? 0xFFFFFFFF
    cdef int _take(self, uint32_t maxp) except -1
    cdef void _forget_burst(self) noexcept
    cdef int _release(self, uint16_t seen_tail=*, bint have_tail=*) except -1
    cdef uint32_t _refill(self, uint16_t seen_tail) noexcept nogil
    cdef bint _has_news(self) noexcept
    cdef bint _moved(self) noexcept
    cdef bint _spin(self, uint64_t budget_ns, bint release_gil) except -1


cdef class Completed:
    cdef object value


cdef class YieldOnce:
    cdef bint yielded


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data


cdef enum:
    MAX_INTERRUPT_EVENTS = 256  # memif has at most 256 rings per direction


cdef class InterruptCore:
    cdef int epoll_fd
    cdef dict callbacks
    cdef epoll_event events[MAX_INTERRUPT_EVENTS]


cdef class Waiter:
    cdef public object _asyncio_future_blocking  # the Future protocol's flag, set by Task
    cdef object loop
    cdef object callback  # the waiting task's wake-up
    cdef object context
    cdef object outcome  # None: woken; else the exception to raise
    cdef int state
    cdef int _deliver(self, fn, context) except -1
    cdef object _finish(self, outcome)
    cdef void _disarm(self) noexcept


cdef class TurnClock:
    cdef uint64_t interval_ns  # a task that never suspends yields after this long
    cdef uint64_t last  # ns (memif_now_ns): when the loop last had a turn from these queues


cdef class QueueCore:
    cdef readonly int index
    cdef readonly object closed_reason  # the gate: None while the link is up
    cdef readonly object on_peer_error
    cdef public bint peer_broke_it  # this queue's ring saw the peer's violation
    cdef TurnClock clock  # shared by the queues of one link
    cdef YieldOnce turn
    cdef int _check(self) except -1
    cdef bint _turn_due(self) noexcept


cdef enum:
    WAIT_PYTHON = 0  # RxQueueCore.wait_mode: async for awaits the subclass's _wait()
    WAIT_INTERRUPT = 1
    WAIT_POLLING = 2
    WAIT_ADAPTIVE = 3
    PHASE_START = 0  # RxQueueCore.phase: where the current wait is
    PHASE_TURN = 1  # gave the loop one turn (a bare yield)
    PHASE_SLEEP = 2  # suspended on the Waiter


cdef class RxQueueCore(QueueCore):
    cdef readonly RxRing ring
    cdef readonly Waiter _waiter  # the consumer's, reused by every wait (None without a loop)
    cdef tuple tx_queues  # TxQueueCores published before the consumer sleeps or spins
    cdef int wait_mode
    cdef int phase
    cdef uint64_t packets_at_signal  # ring.packets when the peer last signalled
    cdef public uint64_t _spin_ns  # polling: the longest spin between two loop turns
    cdef public uint64_t _window_ns  # adaptive: how long to poll after traffic
    cdef public bint spin_releases_gil
    cdef public uint64_t _last_traffic  # adaptive: ns (memif_now_ns) of the last traffic seen
    cdef uint64_t packets_seen  # ring.packets at the last adaptive wait
    cdef int _flush_tx(self) except -1
    cdef int _heat(self, uint64_t now) except -1
    cdef int _wait_step(self, PyObject **result) except -1
    cdef void _abandon_wait(self) noexcept


cdef class QueueWait:
    cdef RxQueueCore queue
    cdef bint started
    cdef int _step(self, PyObject **result) except -1


cdef class PacketResume:
    cdef PacketStream stream


cdef class PacketStream:
    cdef RxQueueCore queue
    cdef RxRing rx
    cdef uint32_t maxp
    cdef uint32_t i
    cdef Completed ready
    cdef object inner  # the _slow() coroutine a wait handed over to, if any
    cdef bint waiting  # PacketResume is in a wait of the queue
    cdef int turn_pending  # 1: the next step gives the loop a turn; 2: then it takes
    cdef int _take(self) except -1
    cdef int _check_live(self) except -1
    cdef bint _take_checked(self) except -1
    cdef object _next(self)
    cdef int _step(self, PyObject **result) except -1
    cdef int _give(self, PyObject **result) except -1
    cdef int _delegate(self, PyObject **result, object exc) except -1


cdef class TxQueueCore(QueueCore):
    cdef readonly TxRing ring
    cdef object call_soon
    cdef uint32_t max_burst
    cdef bint scheduled
    cdef uint32_t since_turn  # sends since the last YieldOnce
    cdef uint32_t yield_every  # sends between two looks at the clock (0: never yields)


cdef class TxRing:
    cdef readonly Ring ring
    cdef RegionTable regions
    cdef bint slave
    cdef bint closed
    cdef Signaller signaller
    cdef int signal_slot
    cdef uint32_t max_burst
    cdef uint32_t alloc_n
    cdef bint in_call       # a transmit call is running (see _enter)
    cdef uint32_t staged_descs    # stage(): descriptors written after pos, not published yet
    cdef uint32_t staged_packets
    cdef uint64_t staged_bytes
    cdef uint32_t staged_room     # free descriptors after the staged ones, as last loaded
    cdef tx_ctx c
    cdef Py_buffer *pybufs
    cdef object _table_arr
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes
    cdef readonly uint64_t errors
    cdef int _enter(self) except -1
    cdef int _check_ready(self) except -1
    cdef uint32_t _free(self) except? 0xFFFFFFFF
    cdef object _free_slots_unguarded(self)
    cdef bint _peer_polls(self) except -1
    cdef uint32_t _flush(self) except? 0xFFFFFFFF
    cdef object _flush_unguarded(self)
    cdef int _stage_one(self) except -1
    cdef int _stage(self, data, uint32_t metadata) except -1
    cdef int _stage_unguarded(self, data, uint32_t metadata) except -1
    cdef int _publish(self, uint32_t ndesc) except -1
    cdef int _plan(self, uint32_t npk, uint64_t first=*) except -1
    cdef int _write_and_publish(self) except -1
    cdef int _run(self, uint32_t npk) except -1
    cdef object _tx_burst_unguarded(self, packets, metadata=*)
    cdef object _tx_burst_array_unguarded(self, data, lengths, metadata=*)
    cdef object _tx_burst_from_unguarded(self, Burst burst, Py_ssize_t start=*)
    cdef object _alloc_unguarded(self, Py_ssize_t n)
    cdef object _commit_unguarded(self, lengths, metadata=*)
    cdef object _forward_unguarded(self, Burst burst)


cdef class Signaller:
    cdef memif_uring uring
    cdef memif_signal_thread *helper
    cdef bint use_uring
    cdef readonly str backend
    cdef int *fds
    cdef int nslots
    cdef readonly bint closed
    cdef readonly object fault
    cdef object on_fault
    cdef readonly uint64_t signals
    cdef readonly uint64_t failures
    cdef void _signal(self, int slot) noexcept
    cdef void _set_fault(self, str reason) noexcept
    cdef void _release(self) noexcept
