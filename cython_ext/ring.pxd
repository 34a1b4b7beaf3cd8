# C-level declarations of the memif ring hot path (memif_aio._ring): shared-memory layout,
# atomics, and the structs the nogil burst loops work on. ring.pyx does `from ring cimport *`.
# (The extension classes are declared in ring.pyx itself: Cython looks a module's own .pxd up
# by its qualified name, memif_aio/_ring.pxd, which is outside cython_ext/.)

from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef extern from *:
    """
    #include <stdint.h>

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
    static inline void memif_flags_or(uint16_t *p, uint16_t v) {
        __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
    }
    static inline void memif_flags_and(uint16_t *p, uint16_t v) {
        __atomic_fetch_and(p, v, __ATOMIC_RELAXED);
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
    void memif_desc_snapshot(const memif_desc_t *src, memif_desc_t *dst) noexcept nogil


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
    uint16_t br
    uint32_t bs
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
    uint16_t br
    uint32_t bs
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
