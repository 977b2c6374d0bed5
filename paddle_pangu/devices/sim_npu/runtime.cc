// Simulated Ascend device runtime: the C_DeviceInterface Paddle loads from CUSTOM_DEVICE_ROOT, exactly as it
// loads paddle-custom-npu (written from paddle/phi/backends/device_ext.h of the installed wheel).
//
// What it is: device type "npu" (sub type "PanGuSim"), PANGU_SIM_NPU_COUNT devices (default 8) whose memory
// is anonymous host mappings (outside the malloc heap) behind a real per-device allocator (used / total bytes, a limit: PANGU_SIM_NPU_MEMORY_MB,
// default 16384 per device; an allocation over the limit fails as on a device, so Paddle reports OOM),
// synchronous streams and events, and real collectives (xccl_*) between the processes of one machine.
//
// Collectives: one POSIX shared-memory segment per communicator, named from the unique id Paddle hands out
// (rank 0's xccl_get_unique_id, broadcast by Paddle's store), holding a process-shared barrier (futex),
// one staging slot per rank and one single-producer / single-consumer ring per (src, dst) pair for
// send / recv. Reductions are computed by every rank from all slots in rank order, so every rank gets
// bit-identical results:
//   fp32 / fp64:   ((x0 + x1) + x2) + ... in the type itself (IEEE, no FMA, no reassociation);
//   fp16 / bf16:   the same order accumulated in fp32, rounded once to the type (round to nearest even);
//   integers:      exact in the type (wrap-around as the hardware), bool: SUM/MAX = or, MIN/PROD = and;
//   AVG:           the SUM above divided by nranks (in fp32 for fp16 / bf16, then rounded once).
// A peer that does not arrive within PANGU_SIM_NPU_TIMEOUT seconds (default 600) fails the collective
// with a message on stderr instead of hanging forever.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "paddle/phi/backends/device_ext.h"

namespace {

constexpr int kMaxDevices = 64;
std::atomic<size_t> g_used[kMaxDevices];   // bytes allocated per device
std::atomic<size_t> g_peak[kMaxDevices];   // high-water mark per device
thread_local int g_current_device = 0;

size_t EnvSize(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  unsigned long long x = std::strtoull(v, &end, 10);
  return (end != nullptr && *end == '\0' && x > 0) ? static_cast<size_t>(x) : fallback;
}

size_t DeviceCount() { return std::min<size_t>(EnvSize("PANGU_SIM_NPU_COUNT", 8), kMaxDevices); }
size_t DeviceLimit() { return EnvSize("PANGU_SIM_NPU_MEMORY_MB", 16384) << 20; }
double TimeoutSeconds() { return static_cast<double>(EnvSize("PANGU_SIM_NPU_TIMEOUT", 600)); }

bool ValidDevice(const C_Device d) { return d != nullptr && d->id >= 0 && static_cast<size_t>(d->id) < DeviceCount(); }

// ---- device management ------------------------------------------------------------------------------
// The live device allocations (pointer -> (device, bytes)): every free is checked against them.
std::mutex g_live_mu;
std::unordered_map<void*, std::pair<int, size_t>>& Live() {
  static auto* live = new std::unordered_map<void*, std::pair<int, size_t>>;  // never destroyed: frees at exit
  return *live;
}
C_Status Init() { return C_SUCCESS; }
C_Status Finalize() { return C_SUCCESS; }
C_Status InitDevice(const C_Device d) { return ValidDevice(d) ? C_SUCCESS : C_ERROR; }
C_Status SetDevice(const C_Device d) {
  if (!ValidDevice(d)) return C_ERROR;
  g_current_device = d->id;
  return C_SUCCESS;
}
C_Status GetDevice(const C_Device d) {
  d->id = g_current_device;
  return C_SUCCESS;
}
C_Status DeinitDevice(const C_Device) { return C_SUCCESS; }
C_Status GetDeviceCount(size_t* count) {
  *count = DeviceCount();
  return C_SUCCESS;
}
C_Status GetDeviceList(size_t* devices) {
  for (size_t i = 0; i < DeviceCount(); ++i) devices[i] = i;
  return C_SUCCESS;
}

// ---- streams and events: every operation completes before it returns ---------------------------------
struct Handle { int device; };
C_Status CreateStream(const C_Device d, C_Stream* s) {
  *s = reinterpret_cast<C_Stream>(new Handle{d->id});
  return C_SUCCESS;
}
C_Status DestroyStream(const C_Device, C_Stream s) {
  delete reinterpret_cast<Handle*>(s);
  return C_SUCCESS;
}
C_Status QueryStream(const C_Device, C_Stream) { return C_SUCCESS; }
C_Status AddCallback(const C_Device d, C_Stream s, C_Callback cb, void* user) {
  C_Status status = C_SUCCESS;
  cb(d, s, user, &status);
  return status;
}
C_Status CreateEvent(const C_Device d, C_Event* e) {
  *e = reinterpret_cast<C_Event>(new Handle{d->id});
  return C_SUCCESS;
}
C_Status RecordEvent(const C_Device, C_Stream, C_Event) { return C_SUCCESS; }
C_Status DestroyEvent(const C_Device, C_Event e) {
  delete reinterpret_cast<Handle*>(e);
  return C_SUCCESS;
}
C_Status QueryEvent(const C_Device, C_Event) { return C_SUCCESS; }
C_Status SyncDevice(const C_Device) { return C_SUCCESS; }
C_Status SyncStream(const C_Device, C_Stream) { return C_SUCCESS; }
C_Status SyncEvent(const C_Device, C_Event) { return C_SUCCESS; }
C_Status StreamWaitEvent(const C_Device, C_Stream, C_Event) { return C_SUCCESS; }

// ---- memory: a counted allocator per device ------------------------------------------------------------
constexpr size_t kAlign = 64;

// The live allocations of every device (pointer -> (device, bytes)): a free is checked against them.

size_t MappedBytes(size_t bytes) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (bytes + page - 1) / page * page;
}

// Device memory is its own anonymous mapping, not the host's malloc heap: a device address space is
// separate from the host's, so device memory must not depend on how the process tunes malloc (runtime.py
// sets M_MMAP_MAX=0, which put every device block, the naive_best_fit allocator's ~15 GB first chunk
// included, inside the brk heap), and an access past a block faults instead of corrupting host heap
// metadata. MAP_NORESERVE: pages are committed when touched, as the chunk Paddle reserves is mostly unused.
C_Status Allocate(const C_Device d, void** ptr, size_t size) {
  *ptr = nullptr;
  if (!ValidDevice(d)) return C_ERROR;
  size_t bytes = std::max<size_t>(size, 1);
  size_t used = g_used[d->id].fetch_add(bytes) + bytes;
  if (used > DeviceLimit()) {  // over the device's memory: fail like a device (Paddle raises its OOM error)
    g_used[d->id].fetch_sub(bytes);
    return C_FAILED;
  }
  void* p = mmap(nullptr, MappedBytes(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) {
    g_used[d->id].fetch_sub(bytes);
    return C_FAILED;
  }
  size_t peak = g_peak[d->id].load();
  while (used > peak && !g_peak[d->id].compare_exchange_weak(peak, used)) {
  }
  {
    std::lock_guard<std::mutex> lock(g_live_mu);
    Live()[p] = {d->id, bytes};
  }
  *ptr = p;
  return C_SUCCESS;
}
// A pointer this allocator did not hand out (or already freed) is refused, as a device runtime refuses it.
C_Status Deallocate(const C_Device d, void* ptr, size_t size) {
  if (!ValidDevice(d)) return C_ERROR;
  if (ptr == nullptr) return C_SUCCESS;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(g_live_mu);
    auto it = Live().find(ptr);
    if (it == Live().end() || it->second.first != d->id) {
      std::fprintf(stderr, "pangu sim npu: device_memory_deallocate(npu:%d, %p, %zu bytes): not a live allocation "
                   "of this device\n", d->id, ptr, size);
      return C_ERROR;
    }
    bytes = it->second.second;
    Live().erase(it);
  }
  munmap(ptr, MappedBytes(bytes));
  g_used[d->id].fetch_sub(bytes);
  return C_SUCCESS;
}
C_Status MemSet(const C_Device, void* ptr, unsigned char value, size_t size) {
  std::memset(ptr, value, size);
  return C_SUCCESS;
}
C_Status HostAllocate(const C_Device, void** ptr, size_t size) {
  *ptr = std::aligned_alloc(kAlign, (std::max<size_t>(size, 1) + kAlign - 1) / kAlign * kAlign);
  return *ptr == nullptr ? C_FAILED : C_SUCCESS;
}
C_Status HostDeallocate(const C_Device, void* ptr, size_t) {
  std::free(ptr);
  return C_SUCCESS;
}
C_Status Copy(const C_Device, void* dst, const void* src, size_t size) {
  if (size > 0 && dst != src) std::memmove(dst, src, size);
  return C_SUCCESS;
}
C_Status CopyP2P(const C_Device, const C_Device, void* dst, const void* src, size_t size) {
  if (size > 0 && dst != src) std::memmove(dst, src, size);
  return C_SUCCESS;
}
C_Status AsyncCopy(const C_Device d, C_Stream, void* dst, const void* src, size_t size) { return Copy(d, dst, src, size); }
C_Status AsyncCopyP2P(const C_Device a, const C_Device b, C_Stream, void* dst, const void* src, size_t size) {
  return CopyP2P(a, b, dst, src, size);
}
C_Status MemStats(const C_Device d, size_t* total, size_t* free_bytes) {
  if (!ValidDevice(d)) return C_ERROR;
  size_t limit = DeviceLimit(), used = g_used[d->id].load();
  *total = limit;
  *free_bytes = used >= limit ? 0 : limit - used;
  return C_SUCCESS;
}
C_Status MinChunk(const C_Device, size_t* size) {
  *size = 512;
  return C_SUCCESS;
}
C_Status ExtraPadding(const C_Device, size_t* size) {
  *size = 0;
  return C_SUCCESS;
}
C_Status Supported(const C_Device, bool* yes) {
  *yes = true;
  return C_SUCCESS;
}

// ---- numeric helpers for the reductions --------------------------------------------------------------
float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToHalf(float f) {  // round to nearest even, overflow to inf, NaN kept NaN
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: rounds to inf
  if (absx < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25: rounds to zero
    uint32_t exp = absx >> 23, man = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp;  // 113 - exp + 13
    uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t base = absx - 0x38000000u;  // rebias exponent 127 -> 15
  uint32_t half = base >> 13, rem = base & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

float Bf16ToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

size_t TypeSize(C_DataType t) {
  switch (t) {
    case BOOL: case UINT8: case INT8: return 1;
    case UINT16: case INT16: case FLOAT16: case BFLOAT16: return 2;
    case UINT32: case INT32: case FLOAT32: return 4;
    case UINT64: case INT64: case FLOAT64: case COMPLEX64: return 8;
    case COMPLEX128: return 16;
    default: return 0;
  }
}

template <typename T>
T Combine(T a, T b, C_CCLReduceOp op) {
  switch (op) {
    case MAX: return a < b ? b : a;
    case MIN: return b < a ? b : a;
    case PRODUCT: return static_cast<T>(a * b);
    default: return static_cast<T>(a + b);  // SUM, AVG
  }
}

template <typename T>
T CombineFloat(T a, T b, C_CCLReduceOp op) {  // NaN propagates through MAX / MIN as on the device
  if (op == MAX || op == MIN) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) ? a : b;
  }
  return Combine(a, b, op);
}

// out[i] = reduce over r of in[r][i], rank order; T is the storage type
template <typename T>
void ReduceInt(const std::vector<const void*>& in, void* out, size_t n, C_CCLReduceOp op) {
  T* o = static_cast<T*>(out);
  size_t ranks = in.size();
  for (size_t i = 0; i < n; ++i) {
    T acc = static_cast<const T*>(in[0])[i];
    for (size_t r = 1; r < ranks; ++r) acc = Combine(acc, static_cast<const T*>(in[r])[i], op);
    if (op == AVG) acc = static_cast<T>(acc / static_cast<T>(ranks));
    o[i] = acc;
  }
}

template <typename T>
void ReduceFloat(const std::vector<const void*>& in, void* out, size_t n, C_CCLReduceOp op) {
  T* o = static_cast<T*>(out);
  size_t ranks = in.size();
  for (size_t i = 0; i < n; ++i) {
    volatile T acc = static_cast<const T*>(in[0])[i];  // volatile: no reassociation across ranks
    for (size_t r = 1; r < ranks; ++r) acc = CombineFloat<T>(acc, static_cast<const T*>(in[r])[i], op);
    o[i] = op == AVG ? static_cast<T>(acc / static_cast<T>(ranks)) : acc;
  }
}

template <float (*Load)(uint16_t), uint16_t (*Store)(float)>
void ReduceHalf(const std::vector<const void*>& in, void* out, size_t n, C_CCLReduceOp op) {
  uint16_t* o = static_cast<uint16_t*>(out);
  size_t ranks = in.size();
  for (size_t i = 0; i < n; ++i) {
    volatile float acc = Load(static_cast<const uint16_t*>(in[0])[i]);
    for (size_t r = 1; r < ranks; ++r) acc = CombineFloat<float>(acc, Load(static_cast<const uint16_t*>(in[r])[i]), op);
    o[i] = Store(op == AVG ? acc / static_cast<float>(ranks) : acc);
  }
}

void ReduceBool(const std::vector<const void*>& in, void* out, size_t n, C_CCLReduceOp op) {
  uint8_t* o = static_cast<uint8_t*>(out);
  bool all = (op == MIN || op == PRODUCT);
  for (size_t i = 0; i < n; ++i) {
    bool acc = static_cast<const uint8_t*>(in[0])[i] != 0;
    for (size_t r = 1; r < in.size(); ++r) {
      bool v = static_cast<const uint8_t*>(in[r])[i] != 0;
      acc = all ? (acc && v) : (acc || v);
    }
    o[i] = acc ? 1 : 0;
  }
}

bool Reduce(C_DataType t, const std::vector<const void*>& in, void* out, size_t n, C_CCLReduceOp op) {
  switch (t) {
    case FLOAT32: ReduceFloat<float>(in, out, n, op); return true;
    case FLOAT64: ReduceFloat<double>(in, out, n, op); return true;
    case FLOAT16: ReduceHalf<HalfToFloat, FloatToHalf>(in, out, n, op); return true;
    case BFLOAT16: ReduceHalf<Bf16ToFloat, FloatToBf16>(in, out, n, op); return true;
    case INT8: ReduceInt<int8_t>(in, out, n, op); return true;
    case UINT8: ReduceInt<uint8_t>(in, out, n, op); return true;
    case INT16: ReduceInt<int16_t>(in, out, n, op); return true;
    case UINT16: ReduceInt<uint16_t>(in, out, n, op); return true;
    case INT32: ReduceInt<int32_t>(in, out, n, op); return true;
    case UINT32: ReduceInt<uint32_t>(in, out, n, op); return true;
    case INT64: ReduceInt<int64_t>(in, out, n, op); return true;
    case UINT64: ReduceInt<uint64_t>(in, out, n, op); return true;
    case BOOL: ReduceBool(in, out, n, op); return true;
    default: return false;
  }
}

// ---- the communicator: shared memory between the ranks of one machine ----------------------------------
constexpr size_t kIdSize = 128;            // unique id bytes (rank 0's, broadcast by Paddle's store)
constexpr size_t kSlotBytes = 8u << 20;    // staging bytes per rank per step
constexpr size_t kRingBytes = 4u << 20;    // send / recv ring per (src, dst) pair
constexpr size_t kMaxRanks = 64;

struct alignas(64) Ring {
  std::atomic<uint64_t> head;  // bytes written by the sender
  char pad0[56];
  std::atomic<uint64_t> tail;  // bytes consumed by the receiver
  char pad1[56];
};

struct Header {
  std::atomic<uint32_t> arrived;
  std::atomic<uint32_t> generation;  // futex word
  std::atomic<uint32_t> attached;
  uint32_t nranks;
  Ring rings[1];  // nranks * nranks, then the slots, then the ring buffers
};

struct Comm {
  std::string name;
  size_t nranks = 0, rank = 0;
  char* base = nullptr;
  size_t bytes = 0;
  Header* hdr = nullptr;
  char* slots = nullptr;
  char* ring_data = nullptr;
  Ring* ring(size_t src, size_t dst) { return &hdr->rings[src * nranks + dst]; }
  char* ring_buf(size_t src, size_t dst) { return ring_data + (src * nranks + dst) * kRingBytes; }
  char* slot(size_t r) { return slots + r * kSlotBytes; }
};

size_t HeaderBytes(size_t nranks) {
  size_t h = sizeof(Header) + sizeof(Ring) * (nranks * nranks);
  return (h + 4095) / 4096 * 4096;
}

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  timespec ts{0, 20 * 1000 * 1000};  // wake at least every 20 ms to check the deadline
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}
void FutexWake(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
}

bool Barrier(Comm* c, const char* what) {
  Header* h = c->hdr;
  uint32_t gen = h->generation.load(std::memory_order_acquire);
  if (h->arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == c->nranks) {
    h->arrived.store(0, std::memory_order_relaxed);
    h->generation.fetch_add(1, std::memory_order_acq_rel);
    FutexWake(&h->generation);
    return true;
  }
  double deadline = Now() + TimeoutSeconds();
  int spins = 0;
  while (h->generation.load(std::memory_order_acquire) == gen) {
    if (++spins < 200) {
      sched_yield();
      continue;
    }
    FutexWait(&h->generation, gen);
    if (Now() > deadline) {
      std::fprintf(stderr, "pangu sim npu: %s: rank %zu of %zu waited %.0f s for its peers (%s); a peer died or "
                   "is stuck\n", c->name.c_str(), c->rank, c->nranks, TimeoutSeconds(), what);
      return false;
    }
  }
  return true;
}

C_Status GetCommName(C_CCLComm comm, char* name) {
  Comm* c = reinterpret_cast<Comm*>(comm);
  std::snprintf(name, 64, "%s", c == nullptr ? "pangu_sim_npu" : c->name.c_str() + 1);
  return C_SUCCESS;
}

C_Status UniqueIdSize(size_t* size) {
  *size = kIdSize;
  return C_SUCCESS;
}

// A job killed between creating its segment and the moment every rank has mapped it (rank 0 unlinks it
// then) leaves /dev/shm/pangu_npu_<pid>_<hex> behind, up to ~100 MB each. The rank that creates a new
// group's id removes every such segment whose creator <pid> no longer exists: a live job's creator is
// alive until its ranks have joined, so only leftovers of dead jobs go.
void RemoveDeadSegments() {
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return;
  const char prefix[] = "pangu_npu_";
  while (dirent* e = readdir(dir)) {
    if (std::strncmp(e->d_name, prefix, sizeof(prefix) - 1) != 0) continue;
    char* end = nullptr;
    long pid = std::strtol(e->d_name + sizeof(prefix) - 1, &end, 10);
    if (pid <= 0 || end == nullptr || *end != '_') continue;
    if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) shm_unlink((std::string("/") + e->d_name).c_str());
  }
  closedir(dir);
}

C_Status UniqueId(C_CCLRootId* id) {
  if (id->sz < 32) return C_ERROR;
  RemoveDeadSegments();
  unsigned char rnd[16] = {0};
  int fd = open("/dev/urandom", O_RDONLY);
  bool ok = fd >= 0 && read(fd, rnd, sizeof(rnd)) == static_cast<ssize_t>(sizeof(rnd));
  if (fd >= 0) close(fd);
  if (!ok) return C_FAILED;
  char text[64];
  int n = std::snprintf(text, sizeof(text), "/pangu_npu_%d_", static_cast<int>(getpid()));
  for (int i = 0; i < 8 && n + 2 < static_cast<int>(sizeof(text)); ++i) n += std::snprintf(text + n, 3, "%02x", rnd[i]);
  std::memset(id->data, 0, id->sz);
  std::memcpy(id->data, text, std::min<size_t>(std::strlen(text), id->sz - 1));
  return C_SUCCESS;
}

C_Status CommInitRank(size_t nranks, C_CCLRootId* id, size_t rank, C_CCLComm* out) {
  if (nranks == 0 || nranks > kMaxRanks || rank >= nranks || id == nullptr || id->data == nullptr) return C_ERROR;
  std::string name(static_cast<const char*>(id->data), strnlen(static_cast<const char*>(id->data), id->sz));
  if (name.rfind("/pangu_npu_", 0) != 0) return C_ERROR;
  size_t header = HeaderBytes(nranks);
  size_t bytes = header + nranks * kSlotBytes + nranks * nranks * kRingBytes;
  int fd = shm_open(name.c_str(), O_CREAT | O_RDWR, 0600);
  if (fd < 0) {
    std::fprintf(stderr, "pangu sim npu: shm_open(%s) failed: %s\n", name.c_str(), std::strerror(errno));
    return C_FAILED;
  }
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {  // every rank sets the same size: no data is lost
    std::fprintf(stderr, "pangu sim npu: ftruncate(%s) failed: %s\n", name.c_str(), std::strerror(errno));
    close(fd);
    return C_FAILED;
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return C_FAILED;
  Comm* c = new Comm;
  c->name = name;
  c->nranks = nranks;
  c->rank = rank;
  c->base = static_cast<char*>(p);
  c->bytes = bytes;
  c->hdr = reinterpret_cast<Header*>(p);
  c->slots = c->base + header;
  c->ring_data = c->slots + nranks * kSlotBytes;
  // the segment starts zeroed (ftruncate), which is the barrier's initial state; wait for every rank to
  // map it, then the name is removed so nothing outlives the job
  double deadline = Now() + TimeoutSeconds();
  c->hdr->attached.fetch_add(1);
  while (c->hdr->attached.load() < nranks) {
    if (Now() > deadline) {
      std::fprintf(stderr, "pangu sim npu: %s: only %u of %zu ranks joined\n", name.c_str(), c->hdr->attached.load(), nranks);
      return C_FAILED;
    }
    usleep(200);
  }
  if (!Barrier(c, "init")) return C_FAILED;
  if (rank == 0) shm_unlink(name.c_str());
  *out = reinterpret_cast<C_CCLComm>(c);
  return C_SUCCESS;
}

C_Status DestroyComm(C_CCLComm comm) {
  Comm* c = reinterpret_cast<Comm*>(comm);
  if (c == nullptr) return C_SUCCESS;
  munmap(c->base, c->bytes);
  delete c;
  return C_SUCCESS;
}

// The reductions: chunk by chunk through the staging slots; every rank reduces the chunk itself.
C_Status AllReduceImpl(const void* send, void* recv, size_t count, C_DataType t, C_CCLReduceOp op, Comm* c,
                       long root) {
  size_t es = TypeSize(t);
  if (es == 0 || t == COMPLEX64 || t == COMPLEX128) return C_ERROR;
  size_t per = kSlotBytes / es;
  std::vector<const void*> in(c->nranks);
  for (size_t off = 0; off < count; off += per) {
    size_t n = std::min(per, count - off);
    std::memcpy(c->slot(c->rank), static_cast<const char*>(send) + off * es, n * es);
    if (!Barrier(c, "reduce")) return C_FAILED;
    for (size_t r = 0; r < c->nranks; ++r) in[r] = c->slot(r);
    if (root < 0 || static_cast<size_t>(root) == c->rank) {
      if (!Reduce(t, in, static_cast<char*>(recv) + off * es, n, op)) return C_ERROR;
    }
    if (!Barrier(c, "reduce done")) return C_FAILED;  // slots may be overwritten after this
  }
  return C_SUCCESS;
}

C_Status AllReduce(void* send, void* recv, size_t count, C_DataType t, C_CCLReduceOp op, C_CCLComm comm, C_Stream) {
  return AllReduceImpl(send, recv, count, t, op, reinterpret_cast<Comm*>(comm), -1);
}

C_Status ReduceOp(void* send, void* recv, size_t count, C_DataType t, C_CCLReduceOp op, size_t root, C_CCLComm comm,
                  C_Stream) {
  Comm* c = reinterpret_cast<Comm*>(comm);
  if (root >= c->nranks) return C_ERROR;
  return AllReduceImpl(send, recv, count, t, op, c, static_cast<long>(root));
}

C_Status Broadcast(void* buf, size_t count, C_DataType t, size_t root, C_CCLComm comm, C_Stream) {
  Comm* c = reinterpret_cast<Comm*>(comm);
  size_t es = TypeSize(t), total = count * es;
  if (es == 0 || root >= c->nranks) return C_ERROR;
  for (size_t off = 0; off < total; off += kSlotBytes) {
    size_t n = std::min(kSlotBytes, total - off);
    if (c->rank == root) std::memcpy(c->slot(root), static_cast<char*>(buf) + off, n);
    if (!Barrier(c, "broadcast")) return C_FAILED;
    if (c->rank != root) std::memcpy(static_cast<char*>(buf) + off, c->slot(root), n);
    if (!Barrier(c, "broadcast done")) return C_FAILED;
  }
  return C_SUCCESS;
}

// recv = [send of rank 0 | send of rank 1 | ...], count elements each
C_Status AllGather(void* send, void* recv, size_t count, C_DataType t, C_CCLComm comm, C_Stream) {
  Comm* c = reinterpret_cast<Comm*>(comm);
  size_t es = TypeSize(t), total = count * es;
  if (es == 0) return C_ERROR;
  for (size_t off = 0; off < total; off += kSlotBytes) {
    size_t n = std::min(kSlotBytes, total - off);
    std::memcpy(c->slot(c->rank), static_cast<const char*>(send) + off, n);
    if (!Barrier(c, "all_gather")) return C_FAILED;
    for (size_t r = 0; r < c->nranks; ++r) std::memcpy(static_cast<char*>(recv) + r * total + off, c->slot(r), n);
    if (!Barrier(c, "all_gather done")) return C_FAILED;
  }
  return C_SUCCESS;
}

// send holds nranks blocks of `count` elements; rank r receives the reduction of block r
C_Status ReduceScatter(void* send, void* recv, size_t count, C_DataType t, C_CCLReduceOp op, C_CCLComm comm,
                       C_Stream) {
  Comm* c = reinterpret_cast<Comm*>(comm);
  size_t es = TypeSize(t);
  if (es == 0 || t == COMPLEX64 || t == COMPLEX128) return C_ERROR;
  size_t per = kSlotBytes / es;
  std::vector<const void*> in(c->nranks);
  for (size_t off = 0; off < count; off += per) {
    size_t n = std::min(per, count - off);
    // each rank stages only the block this chunk of rank `dst` needs, one destination at a time
    for (size_t dst = 0; dst < c->nranks; ++dst) {
      std::memcpy(c->slot(c->rank), static_cast<const char*>(send) + (dst * count + off) * es, n * es);
      if (!Barrier(c, "reduce_scatter")) return C_FAILED;
      if (dst == c->rank) {
        for (size_t r = 0; r < c->nranks; ++r) in[r] = c->slot(r);
        if (!Reduce(t, in, static_cast<char*>(recv) + off * es, n, op)) return C_ERROR;
      }
      if (!Barrier(c, "reduce_scatter done")) return C_FAILED;
    }
  }
  return C_SUCCESS;
}

// ---- send / recv: byte streams through the (src, dst) rings; inside group_start / group_end the calls are
// queued and progressed together at group_end, so a pair of ranks may both send before they receive ----
struct P2P {
  bool is_send;
  char* buf;
  size_t bytes, done;
  size_t peer;
  Comm* comm;
};
thread_local int g_group_depth = 0;
thread_local std::vector<P2P> g_pending;

// move as many bytes as the ring allows; true when the operation is complete
bool Progress(P2P* op) {
  Comm* c = op->comm;
  Ring* ring = op->is_send ? c->ring(c->rank, op->peer) : c->ring(op->peer, c->rank);
  char* data = op->is_send ? c->ring_buf(c->rank, op->peer) : c->ring_buf(op->peer, c->rank);
  while (op->done < op->bytes) {
    uint64_t head = ring->head.load(std::memory_order_acquire), tail = ring->tail.load(std::memory_order_acquire);
    size_t avail = op->is_send ? kRingBytes - static_cast<size_t>(head - tail) : static_cast<size_t>(head - tail);
    if (avail == 0) return false;
    uint64_t pos = op->is_send ? head : tail;
    size_t at = static_cast<size_t>(pos % kRingBytes);
    size_t n = std::min({avail, op->bytes - op->done, kRingBytes - at});
    if (op->is_send) {
      std::memcpy(data + at, op->buf + op->done, n);
      ring->head.store(head + n, std::memory_order_release);
    } else {
      std::memcpy(op->buf + op->done, data + at, n);
      ring->tail.store(tail + n, std::memory_order_release);
    }
    op->done += n;
  }
  return true;
}

C_Status RunAll(std::vector<P2P>* ops) {
  double deadline = Now() + TimeoutSeconds();
  int idle = 0;
  for (;;) {
    bool all = true, moved = false;
    for (P2P& op : *ops) {
      size_t before = op.done;
      if (!Progress(&op)) all = false;
      moved = moved || op.done != before;
    }
    if (all) break;
    if (moved) {
      idle = 0;
      deadline = Now() + TimeoutSeconds();
    } else if (++idle < 200) {
      sched_yield();
    } else {
      usleep(50);
      if (Now() > deadline) {
        std::fprintf(stderr, "pangu sim npu: send/recv waited %.0f s for a peer; a peer died or is stuck\n",
                     TimeoutSeconds());
        ops->clear();
        return C_FAILED;
      }
    }
  }
  ops->clear();
  return C_SUCCESS;
}

C_Status PointToPoint(bool is_send, void* buf, size_t count, C_DataType t, size_t peer, C_CCLComm comm) {
  Comm* c = reinterpret_cast<Comm*>(comm);
  size_t es = TypeSize(t);
  if (es == 0 || peer >= c->nranks || peer == c->rank) return C_ERROR;
  P2P op{is_send, static_cast<char*>(buf), count * es, 0, peer, c};
  if (g_group_depth > 0) {
    g_pending.push_back(op);
    return C_SUCCESS;
  }
  std::vector<P2P> one{op};
  return RunAll(&one);
}

C_Status Send(void* buf, size_t count, C_DataType t, size_t dst, C_CCLComm comm, C_Stream) {
  return PointToPoint(true, buf, count, t, dst, comm);
}
C_Status Recv(void* buf, size_t count, C_DataType t, size_t src, C_CCLComm comm, C_Stream) {
  return PointToPoint(false, buf, count, t, src, comm);
}
C_Status GroupStart() {
  ++g_group_depth;
  return C_SUCCESS;
}
C_Status GroupEnd() {
  if (g_group_depth == 0) return C_ERROR;
  if (--g_group_depth > 0) return C_SUCCESS;
  return RunAll(&g_pending);
}

}  // namespace

extern "C" {

// Reads by tests (ctypes): bytes allocated now and at the peak on `device`.
size_t pangu_sim_npu_used_bytes(int device) {
  return device >= 0 && device < kMaxDevices ? g_used[device].load() : 0;
}
size_t pangu_sim_npu_peak_bytes(int device) {
  return device >= 0 && device < kMaxDevices ? g_peak[device].load() : 0;
}

void InitPlugin(CustomRuntimeParams* params) {
  PADDLE_CUSTOM_RUNTIME_CHECK_VERSION(params);
  std::memset(reinterpret_cast<void*>(params->interface), 0, sizeof(C_DeviceInterface));
  params->device_type = const_cast<char*>("npu");
  params->sub_device_type = const_cast<char*>("PanGuSim");
  C_DeviceInterface* f = params->interface;
  f->initialize = Init;
  f->finalize = Finalize;
  f->init_device = InitDevice;
  f->set_device = SetDevice;
  f->get_device = GetDevice;
  f->deinit_device = DeinitDevice;
  f->create_stream = CreateStream;
  f->destroy_stream = DestroyStream;
  f->query_stream = QueryStream;
  f->stream_add_callback = AddCallback;
  f->create_event = CreateEvent;
  f->record_event = RecordEvent;
  f->destroy_event = DestroyEvent;
  f->query_event = QueryEvent;
  f->synchronize_device = SyncDevice;
  f->synchronize_stream = SyncStream;
  f->synchronize_event = SyncEvent;
  f->stream_wait_event = StreamWaitEvent;
  f->device_memory_allocate = Allocate;
  f->device_memory_deallocate = Deallocate;
  f->device_memory_set = MemSet;
  f->host_memory_allocate = HostAllocate;
  f->host_memory_deallocate = HostDeallocate;
  f->memory_copy_h2d = Copy;
  f->memory_copy_d2h = Copy;
  f->memory_copy_d2d = Copy;
  f->memory_copy_p2p = CopyP2P;
  f->async_memory_copy_h2d = AsyncCopy;
  f->async_memory_copy_d2h = AsyncCopy;
  f->async_memory_copy_d2d = AsyncCopy;
  f->async_memory_copy_p2p = AsyncCopyP2P;
  f->get_device_count = GetDeviceCount;
  f->get_device_list = GetDeviceList;
  f->device_memory_stats = MemStats;
  f->device_min_chunk_size = MinChunk;
  f->device_extra_padding_size = ExtraPadding;
  f->is_float16_supported = Supported;
  f->is_bfloat16_supported = Supported;
  f->xccl_get_comm_name = GetCommName;
  f->xccl_get_unique_id_size = UniqueIdSize;
  f->xccl_get_unique_id = UniqueId;
  f->xccl_comm_init_rank = CommInitRank;
  f->xccl_destroy_comm = DestroyComm;
  f->xccl_all_reduce = AllReduce;
  f->xccl_broadcast = Broadcast;
  f->xccl_reduce = ReduceOp;
  f->xccl_all_gather = AllGather;
  f->xccl_reduce_scatter = ReduceScatter;
  f->xccl_group_start = GroupStart;
  f->xccl_group_end = GroupEnd;
  f->xccl_send = Send;
  f->xccl_recv = Recv;
}

}  // extern "C"
