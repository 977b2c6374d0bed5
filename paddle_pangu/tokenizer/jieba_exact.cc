// Exact compiled re-implementation of jieba 0.42.1's default segmentation,
// `jieba.cut(text, cut_all=False, HMM=True)` (REF "Tokenizer": the released PanGu-alpha ids come from it),
// built on first use by paddle_pangu/tokenizer/fastseg.py (a plain CPython extension, no paddle).
//
// Why: jieba is pure Python and was the pipeline's largest stage (docs/DATA.md, profile). The output
// must be identical on every string, so this file follows jieba/__init__.py and jieba/finalseg/__init__.py
// step by step, with the same double arithmetic in the same order:
//   * blocks: re_han_default = [\u4E00-\u9FD5a-zA-Z0-9+#&\._%\-]+ ; every other character is its own
//     segment except "\r\n" (re_skip_default = (\r\n|\s) splits the rest, non-matching pieces char by char);
//   * get_DAG: prefix walk in the FREQ dictionary (a key with frequency 0 is a prefix: the walk goes on,
//     no end recorded); no end -> [k];
//   * calc: route[idx] = max((log(FREQ.get(w) or 1) - logtotal + route[x+1][0], x)); Python's max on
//     tuples keeps the larger x on equal floats;
//   * __cut_DAG: single-character words are buffered; a buffer of >1 characters that is not a word with
//     positive frequency goes to finalseg.cut (HMM), else it is emitted char by char;
//   * finalseg.cut: re_han = [\u4E00-\u9FD5]+ runs -> Viterbi over BMES (MIN_FLOAT for missing entries,
//     ties to the larger state letter as Python's tuple max does); other runs split by
//     re_skip = [a-zA-Z0-9]+(?:\.\d+)?%? (matches and the text between them are segments).
// The dictionary (jieba.dt.FREQ, jieba.dt.total) and the HMM tables are handed over by Python from the
// installed jieba package at init(), never copied into this repository. log() is the C library's, the
// same function CPython's math.log calls. No -ffast-math, no FMA contraction (fastseg.py's flags).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

namespace {

constexpr uint32_t kHanLo = 0x4E00, kHanHi = 0x9FD5;  // \u4E00-\u9FD5 of both re_han patterns
constexpr uint64_t kEmpty = ~uint64_t(0);

inline bool IsHan(uint32_t c) { return c >= kHanLo && c <= kHanHi; }
inline bool IsAsciiAlnum(uint32_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
inline bool IsDigit(uint32_t c) { return c >= '0' && c <= '9'; }
// re_han_default's class
inline bool IsBlockChar(uint32_t c) {
  return IsHan(c) || IsAsciiAlnum(c) || c == '+' || c == '#' || c == '&' || c == '.' || c == '_' || c == '%' ||
         c == '-';
}

// ---- the prefix dictionary as a trie whose edges live in one open-addressing hash table ----------------
struct Trie {
  std::vector<uint64_t> keys;   // (parent << 21) | codepoint, kEmpty when free
  std::vector<uint32_t> child;  // node id of the edge
  uint64_t mask = 0;
  std::vector<double> weight;   // log(FREQ[w] or 1) - logtotal
  std::vector<uint8_t> flags;   // 1: the key is in FREQ, 2: FREQ[w] > 0

  static uint64_t Hash(uint64_t k) { return (k * 0x9E3779B97F4A7C15ull) >> 17; }
  // the smallest power-of-two table (>= 1024 slots) at most half full with `edges` edges
  static size_t Capacity(size_t edges) {
    size_t cap = 1024;
    while (cap < edges * 2) cap <<= 1;
    return cap;
  }
  // the slot holding key k, or the empty slot where the linear probe for it ends
  inline uint64_t Slot(uint64_t k) const {
    uint64_t h = Hash(k) & mask;
    while (keys[h] != k && keys[h] != kEmpty) h = (h + 1) & mask;
    return h;
  }

  void Reset(size_t expected_edges) {
    const size_t cap = Capacity(expected_edges);
    keys.assign(cap, kEmpty);
    child.assign(cap, 0);
    mask = cap - 1;
    weight.assign(1, 0.0);
    flags.assign(1, 0);
  }
  // After the build: the same edges in the table Capacity() gives for their number. Reset() sized it from
  // the characters of every FREQ key (a bound: prefixes share edges), ~8x the edges of jieba's dictionary
  // (4M slots, 48 MB, for 0.5M edges); a smaller table keeps more of the walk in cache (docs/DATA.md).
  void Shrink() {
    const size_t cap = Capacity(weight.size() - 1);
    if (cap >= keys.size()) return;
    const std::vector<uint64_t> old_keys = std::move(keys);
    const std::vector<uint32_t> old_child = std::move(child);
    keys.assign(cap, kEmpty);
    child.assign(cap, 0);
    mask = cap - 1;
    for (size_t i = 0; i < old_keys.size(); ++i) {
      if (old_keys[i] == kEmpty) continue;
      const uint64_t h = Slot(old_keys[i]);  // an empty slot: the keys are distinct
      keys[h] = old_keys[i];
      child[h] = old_child[i];
    }
  }
  inline int64_t Find(uint32_t node, uint32_t c) const {
    const uint64_t k = (uint64_t(node) << 21) | c;
    const uint64_t h = Slot(k);
    return keys[h] == k ? int64_t(child[h]) : -1;
  }
  uint32_t FindOrAdd(uint32_t node, uint32_t c, double default_weight) {
    const uint64_t k = (uint64_t(node) << 21) | c;
    const uint64_t h = Slot(k);
    if (keys[h] == k) return child[h];
    keys[h] = k;
    child[h] = static_cast<uint32_t>(weight.size());
    weight.push_back(default_weight);
    flags.push_back(0);
    return child[h];
  }
};

struct Model {
  bool ready = false;
  Trie trie;
  double logtotal = 0.0;
  double min_float = 0.0;
  // states in the order B, E, M, S (alphabetical: Python's tuple max breaks ties on the letter)
  double start[4];
  double trans[4][4];                       // trans[from][to], MIN_FLOAT where jieba's table has no entry
  std::vector<double> emit;                 // [(c - kHanLo) * 4 + state], MIN_FLOAT where missing
  double Emit(uint32_t c, int s) const { return emit[(c - kHanLo) * 4 + s]; }
};
Model g;

enum { B = 0, E = 1, M = 2, S = 3 };
// finalseg.PrevStatus: B <- E,S ; E <- B,M ; M <- M,B ; S <- S,E
const int kPrev[4][2] = {{E, S}, {B, M}, {M, B}, {S, E}};

struct Work {
  std::vector<uint32_t> dag_start;  // per k: offset into dag_end / dag_w
  std::vector<uint32_t> dag_end;
  std::vector<double> dag_w;
  std::vector<double> route_p;
  std::vector<uint32_t> route_x;
  std::vector<double> v;            // Viterbi [t][4]
  std::vector<uint8_t> bp;          // back pointers [t][4]
  std::vector<uint8_t> states;
};

// finalseg.__cut on a run of Han characters s[0, n): ends appended (absolute offset `off`)
void HmmHan(const uint32_t* s, size_t n, size_t off, Work& w, std::vector<uint32_t>& ends) {
  w.v.resize(n * 4);
  w.bp.resize(n * 4);
  w.states.resize(n);
  for (int y = 0; y < 4; ++y) w.v[y] = g.start[y] + g.Emit(s[0], y);
  for (size_t t = 1; t < n; ++t) {
    for (int y = 0; y < 4; ++y) {
      const double em = g.Emit(s[t], y);
      const int a = kPrev[y][0], b = kPrev[y][1];
      const double pa = w.v[(t - 1) * 4 + a] + g.trans[a][y] + em;
      const double pb = w.v[(t - 1) * 4 + b] + g.trans[b][y] + em;
      // max([(pa, a), (pb, b)]): larger probability, equal -> larger state letter
      const bool take_b = pb > pa || (pb == pa && b > a);
      w.v[t * 4 + y] = take_b ? pb : pa;
      w.bp[t * 4 + y] = static_cast<uint8_t>(take_b ? b : a);
    }
  }
  // max((V[-1][y], y) for y in 'ES')
  const double pe = w.v[(n - 1) * 4 + E], ps = w.v[(n - 1) * 4 + S];
  int st = (ps > pe || ps == pe) ? S : E;
  for (size_t t = n; t-- > 0;) {
    w.states[t] = static_cast<uint8_t>(st);
    if (t > 0) st = w.bp[t * 4 + st];
  }
  size_t nexti = 0;
  for (size_t i = 0; i < n; ++i) {
    const int pos = w.states[i];
    if (pos == E || pos == S) {  // E: yield sentence[begin:i+1]; S: yield char; both end at i + 1
      ends.push_back(static_cast<uint32_t>(off + i + 1));
      nexti = i + 1;
    }
  }
  if (nexti < n) ends.push_back(static_cast<uint32_t>(off + n));
}

// finalseg.cut(buf) for buf = s[0, n) (characters of re_han_default's class only)
void FinalsegCut(const uint32_t* s, size_t n, size_t off, Work& w, std::vector<uint32_t>& ends) {
  size_t i = 0;
  while (i < n) {
    if (IsHan(s[i])) {
      size_t j = i;
      while (j < n && IsHan(s[j])) ++j;
      HmmHan(s + i, j - i, off + i, w, ends);
      i = j;
      continue;
    }
    // a non-Han run s[i, j): re_skip.split -> matches and the (non-empty) text between them
    size_t j = i;
    while (j < n && !IsHan(s[j])) ++j;
    size_t p = i, last = i;  // last: end of the previous piece
    while (p < j) {
      if (!IsAsciiAlnum(s[p])) {
        ++p;
        continue;
      }
      size_t q = p;
      while (q < j && IsAsciiAlnum(s[q])) ++q;
      if (q + 1 < j && s[q] == '.' && IsDigit(s[q + 1])) {  // (?:\.\d+)?
        q += 2;
        while (q < j && IsDigit(s[q])) ++q;
      }
      if (q < j && s[q] == '%') ++q;  // %?
      if (p > last) ends.push_back(static_cast<uint32_t>(off + p));
      ends.push_back(static_cast<uint32_t>(off + q));
      last = p = q;
    }
    if (j > last) ends.push_back(static_cast<uint32_t>(off + j));
    i = j;
  }
}

// Is s[0, n) a word with positive frequency (jieba: FREQ.get(buf) truthy)?
bool IsPositiveWord(const uint32_t* s, size_t n) {
  int64_t node = 0;
  for (size_t i = 0; i < n; ++i) {
    node = g.trie.Find(static_cast<uint32_t>(node), s[i]);
    if (node < 0) return false;
  }
  return (g.trie.flags[node] & 2) != 0;
}

void FlushBuf(const uint32_t* s, size_t bs, size_t be, size_t off, Work& w, std::vector<uint32_t>& ends) {
  const size_t n = be - bs;
  if (n == 0) return;
  if (n == 1) {
    ends.push_back(static_cast<uint32_t>(off + be));
  } else if (!IsPositiveWord(s + bs, n)) {
    FinalsegCut(s + bs, n, off + bs, w, ends);
  } else {
    for (size_t k = bs; k < be; ++k) ends.push_back(static_cast<uint32_t>(off + k + 1));
  }
}

// Tokenizer.__cut_DAG on one block s[0, n) of re_han_default characters
void CutDag(const uint32_t* s, size_t n, size_t off, Work& w, std::vector<uint32_t>& ends) {
  const Trie& t = g.trie;
  const double none_w = 0.0 - g.logtotal;  // log(None or 1) - logtotal
  w.dag_start.resize(n + 1);
  w.dag_end.clear();
  w.dag_w.clear();
  for (size_t k = 0; k < n; ++k) {
    w.dag_start[k] = static_cast<uint32_t>(w.dag_end.size());
    const size_t before = w.dag_end.size();
    int64_t node = t.Find(0, s[k]);
    size_t i = k;
    while (node >= 0 && (t.flags[node] & 1)) {  // while i < N and frag in FREQ
      if (t.flags[node] & 2) {                   // if FREQ[frag]: tmplist.append(i)
        w.dag_end.push_back(static_cast<uint32_t>(i));
        w.dag_w.push_back(t.weight[node]);
      }
      ++i;
      if (i >= n) break;
      node = t.Find(static_cast<uint32_t>(node), s[i]);
    }
    if (w.dag_end.size() == before) {  // if not tmplist: tmplist.append(k)
      w.dag_end.push_back(static_cast<uint32_t>(k));
      w.dag_w.push_back(none_w);
    }
  }
  w.dag_start[n] = static_cast<uint32_t>(w.dag_end.size());
  w.route_p.resize(n + 1);
  w.route_x.resize(n + 1);
  w.route_p[n] = 0.0;
  w.route_x[n] = 0;
  for (size_t idx = n; idx-- > 0;) {
    double best = 0.0;
    uint32_t bx = 0;
    bool first = true;
    for (uint32_t d = w.dag_start[idx]; d < w.dag_start[idx + 1]; ++d) {
      const uint32_t x = w.dag_end[d];
      const double p = w.dag_w[d] + w.route_p[x + 1];
      if (first || p > best || (p == best && x > bx)) {
        best = p;
        bx = x;
        first = false;
      }
    }
    w.route_p[idx] = best;
    w.route_x[idx] = bx;
  }
  size_t x = 0, bs = 0, be = 0;  // buf = s[bs, be)
  while (x < n) {
    const size_t y = w.route_x[x] + 1;
    if (y - x == 1) {
      if (be == bs) bs = x;
      be = y;
    } else {
      FlushBuf(s, bs, be, off, w, ends);
      bs = be = 0;
      ends.push_back(static_cast<uint32_t>(off + y));
    }
    x = y;
  }
  FlushBuf(s, bs, be, off, w, ends);
}

// jieba.cut(s) as the end offsets of its segments (the segments tile the input)
void Cut(const uint32_t* s, size_t n, Work& w, std::vector<uint32_t>& ends) {
  size_t i = 0;
  while (i < n) {
    if (IsBlockChar(s[i])) {
      size_t j = i;
      while (j < n && IsBlockChar(s[j])) ++j;
      CutDag(s + i, j - i, i, w, ends);
      i = j;
    } else if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') {
      ends.push_back(static_cast<uint32_t>(i + 2));
      i += 2;
    } else {
      ends.push_back(static_cast<uint32_t>(i + 1));
      i += 1;
    }
  }
}

thread_local Work tl_work;
thread_local std::vector<uint32_t> tl_text, tl_ends, tl_out;

bool ReadText(PyObject* obj, std::vector<uint32_t>& buf) {
  if (!PyUnicode_Check(obj)) {
    PyErr_SetString(PyExc_TypeError, "expected str");
    return false;
  }
  const Py_ssize_t n = PyUnicode_GET_LENGTH(obj);
  if (n >= (Py_ssize_t(1) << 31)) {
    PyErr_SetString(PyExc_ValueError, "text longer than 2^31 characters");
    return false;
  }
  const int kind = PyUnicode_KIND(obj);
  const void* data = PyUnicode_DATA(obj);
  buf.resize(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) buf[i] = PyUnicode_READ(kind, data, i);
  return true;
}

bool CheckReady() {
  if (!g.ready) PyErr_SetString(PyExc_RuntimeError, "_pangu_jieba.init() was not called");
  return g.ready;
}

// cut(text) -> list of segments, as jieba.cut(text, cut_all=False, HMM=True)
PyObject* PyCut(PyObject*, PyObject* arg) {
  if (!CheckReady() || !ReadText(arg, tl_text)) return nullptr;
  tl_ends.clear();
  Py_BEGIN_ALLOW_THREADS
  Cut(tl_text.data(), tl_text.size(), tl_work, tl_ends);
  Py_END_ALLOW_THREADS
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(tl_ends.size()));
  if (!out) return nullptr;
  Py_ssize_t start = 0;
  for (size_t k = 0; k < tl_ends.size(); ++k) {
    PyObject* seg = PyUnicode_Substring(arg, start, tl_ends[k]);
    if (!seg) {
      Py_DECREF(out);
      return nullptr;
    }
    PyList_SET_ITEM(out, static_cast<Py_ssize_t>(k), seg);
    start = tl_ends[k];
  }
  return out;
}

// segment(text) -> " ".join(seg.translate({" ": U+2582, "\n": U+2583}) for seg in jieba.cut(text))
// (REF "Tokenizer": the string PanGu hands to SentencePiece)
PyObject* PySegment(PyObject*, PyObject* arg) {
  if (!CheckReady() || !ReadText(arg, tl_text)) return nullptr;
  tl_ends.clear();
  const size_t n = tl_text.size();
  size_t o = 0, start = 0;
  Py_BEGIN_ALLOW_THREADS
  Cut(tl_text.data(), n, tl_work, tl_ends);
  tl_out.resize(n + (tl_ends.empty() ? 0 : tl_ends.size() - 1));
  for (size_t k = 0; k < tl_ends.size(); ++k) {
    if (k) tl_out[o++] = ' ';
    for (size_t i = start; i < tl_ends[k]; ++i) {
      const uint32_t c = tl_text[i];
      tl_out[o++] = c == ' ' ? 0x2582 : (c == '\n' ? 0x2583 : c);
    }
    start = tl_ends[k];
  }
  Py_END_ALLOW_THREADS
  return PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, tl_out.data(), static_cast<Py_ssize_t>(o));
}

int StateIndex(PyObject* key) {
  if (!PyUnicode_Check(key) || PyUnicode_GET_LENGTH(key) != 1) return -1;
  switch (PyUnicode_READ_CHAR(key, 0)) {
    case 'B': return B;
    case 'E': return E;
    case 'M': return M;
    case 'S': return S;
  }
  return -1;
}

bool GetDouble(PyObject* dict, const char* key, double dflt, double* out) {
  PyObject* v = PyDict_GetItemString(dict, key);  // borrowed
  if (!v) {
    *out = dflt;
    return true;
  }
  *out = PyFloat_AsDouble(v);
  return !(*out == -1.0 && PyErr_Occurred());
}

// init(FREQ: dict[str, int], logtotal: float, start_P, trans_P, emit_P, MIN_FLOAT) -> number of trie nodes
PyObject* PyInit(PyObject*, PyObject* args) {
  PyObject *freq, *start, *trans, *emit;
  double logtotal, min_float;
  if (!PyArg_ParseTuple(args, "O!dO!O!O!d", &PyDict_Type, &freq, &logtotal, &PyDict_Type, &start, &PyDict_Type,
                        &trans, &PyDict_Type, &emit, &min_float))
    return nullptr;
  g.ready = false;
  g.logtotal = logtotal;
  g.min_float = min_float;
  const char* names[4] = {"B", "E", "M", "S"};
  for (int y = 0; y < 4; ++y) {
    if (!GetDouble(start, names[y], min_float, &g.start[y])) return nullptr;
    PyObject* row = PyDict_GetItemString(trans, names[y]);
    for (int z = 0; z < 4; ++z) {
      g.trans[y][z] = min_float;
      if (row && PyDict_Check(row) && !GetDouble(row, names[z], min_float, &g.trans[y][z])) return nullptr;
    }
  }
  g.emit.assign(size_t(kHanHi - kHanLo + 1) * 4, min_float);
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  while (PyDict_Next(emit, &pos, &key, &value)) {
    const int y = StateIndex(key);
    if (y < 0 || !PyDict_Check(value)) {
      PyErr_SetString(PyExc_ValueError, "emit_P: expected {state: {char: float}}");
      return nullptr;
    }
    PyObject *ck, *cv;
    Py_ssize_t p2 = 0;
    while (PyDict_Next(value, &p2, &ck, &cv)) {
      if (!PyUnicode_Check(ck) || PyUnicode_GET_LENGTH(ck) != 1) {
        PyErr_SetString(PyExc_ValueError, "emit_P: a key is not one character");
        return nullptr;
      }
      const uint32_t c = PyUnicode_READ_CHAR(ck, 0);
      const double d = PyFloat_AsDouble(cv);
      if (d == -1.0 && PyErr_Occurred()) return nullptr;
      if (IsHan(c)) g.emit[size_t(c - kHanLo) * 4 + y] = d;  // Viterbi only ever sees re_han characters
    }
  }
  Py_ssize_t edges = 0;
  pos = 0;
  while (PyDict_Next(freq, &pos, &key, &value)) {
    if (!PyUnicode_Check(key)) {
      PyErr_SetString(PyExc_ValueError, "FREQ: a key is not str");
      return nullptr;
    }
    edges += PyUnicode_GET_LENGTH(key);
  }
  g.trie.Reset(static_cast<size_t>(edges));
  const double none_w = 0.0 - logtotal;
  g.trie.weight[0] = none_w;
  pos = 0;
  while (PyDict_Next(freq, &pos, &key, &value)) {
    const Py_ssize_t n = PyUnicode_GET_LENGTH(key);
    if (n == 0) continue;  // "" is never looked up (frag always holds a character)
    int overflow = 0;
    const long long f = PyLong_Check(value) ? PyLong_AsLongLongAndOverflow(value, &overflow) : -1;
    if (f < 0 || overflow || PyErr_Occurred()) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "FREQ: a value is not an int in [0, 2^63)");
      return nullptr;
    }
    const int kind = PyUnicode_KIND(key);
    const void* data = PyUnicode_DATA(key);
    uint32_t node = 0;
    for (Py_ssize_t i = 0; i < n; ++i) node = g.trie.FindOrAdd(node, PyUnicode_READ(kind, data, i), none_w);
    g.trie.flags[node] |= 1;
    if (f > 0) {
      g.trie.flags[node] |= 2;
      // log(FREQ[w]) - logtotal: math.log(int) is the C library's log of the int converted to double
      g.trie.weight[node] = std::log(static_cast<double>(f)) - logtotal;
    }
  }
  g.trie.Shrink();
  g.ready = true;
  return PyLong_FromSize_t(g.trie.weight.size());
}

// ---- the initialised tables as one byte string (fastseg.py's cache, so a worker need not load jieba) ----
// Layout (native byte order; the cache is keyed by this file's hash, the Python version and jieba's files):
// "PGJIEBA1", u64 trie slots, u64 trie nodes, u64 emit entries, f64 logtotal, f64 min_float, f64 start[4],
// f64 trans[16], then keys[slots] u64, child[slots] u32, weight[nodes] f64, flags[nodes] u8, emit[entries] f64.
constexpr char kDumpMagic[8] = {'P', 'G', 'J', 'I', 'E', 'B', 'A', '1'};
constexpr size_t kDumpHeader = 8 + 3 * 8 + 2 * 8 + 4 * 8 + 16 * 8;

// dump() -> bytes of the initialised tables
PyObject* PyDump(PyObject*, PyObject*) {
  if (!CheckReady()) return nullptr;
  const uint64_t slots = g.trie.keys.size(), nodes = g.trie.weight.size(), emits = g.emit.size();
  const size_t total = kDumpHeader + slots * 12 + nodes * 9 + emits * 8;
  PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(total));
  if (!out) return nullptr;
  char* p = PyBytes_AS_STRING(out);
  auto put = [&p](const void* src, size_t n) { std::memcpy(p, src, n); p += n; };
  put(kDumpMagic, 8);
  put(&slots, 8); put(&nodes, 8); put(&emits, 8);
  put(&g.logtotal, 8); put(&g.min_float, 8); put(g.start, sizeof(g.start)); put(g.trans, sizeof(g.trans));
  put(g.trie.keys.data(), slots * 8); put(g.trie.child.data(), slots * 4);
  put(g.trie.weight.data(), nodes * 8); put(g.trie.flags.data(), nodes);
  put(g.emit.data(), emits * 8);
  return out;
}

// restore(buffer) -> trie nodes: the tables of a dump(); every size and every edge's node checked, so a
// damaged buffer is refused (ValueError) and never indexes out of range
PyObject* PyRestore(PyObject*, PyObject* args) {
  Py_buffer buf;
  if (!PyArg_ParseTuple(args, "y*", &buf)) return nullptr;
  const char* p = static_cast<const char*>(buf.buf);
  const size_t len = static_cast<size_t>(buf.len);
  auto fail = [&buf](const char* why) {
    PyBuffer_Release(&buf);
    PyErr_SetString(PyExc_ValueError, why);
    return nullptr;
  };
  if (len < kDumpHeader || std::memcmp(p, kDumpMagic, 8) != 0) return fail("not a _pangu_jieba dump");
  uint64_t slots, nodes, emits;
  std::memcpy(&slots, p + 8, 8);
  std::memcpy(&nodes, p + 16, 8);
  std::memcpy(&emits, p + 24, 8);
  if (slots < 1024 || (slots & (slots - 1)) != 0 || slots > (uint64_t(1) << 40) || nodes == 0 || nodes > slots + 1 ||
      emits != uint64_t(kHanHi - kHanLo + 1) * 4 || len != kDumpHeader + slots * 12 + nodes * 9 + emits * 8)
    return fail("_pangu_jieba dump: sizes do not match");
  g.ready = false;
  const char* q = p + 32;
  auto get = [&q](void* dst, size_t n) { std::memcpy(dst, q, n); q += n; };
  get(&g.logtotal, 8); get(&g.min_float, 8); get(g.start, sizeof(g.start)); get(g.trans, sizeof(g.trans));
  g.trie.keys.resize(slots); g.trie.child.resize(slots); g.trie.weight.resize(nodes); g.trie.flags.resize(nodes);
  g.emit.resize(emits);
  get(g.trie.keys.data(), slots * 8); get(g.trie.child.data(), slots * 4);
  get(g.trie.weight.data(), nodes * 8); get(g.trie.flags.data(), nodes);
  get(g.emit.data(), emits * 8);
  PyBuffer_Release(&buf);
  g.trie.mask = slots - 1;
  for (uint64_t h = 0; h < slots; ++h) {
    if (g.trie.keys[h] != kEmpty && (g.trie.child[h] == 0 || g.trie.child[h] >= nodes || (g.trie.keys[h] >> 21) >= nodes)) {
      PyErr_SetString(PyExc_ValueError, "_pangu_jieba dump: an edge points outside the trie");
      return nullptr;
    }
  }
  g.ready = true;
  return PyLong_FromUnsignedLongLong(nodes);
}

// word_weight(word) -> (in FREQ, FREQ > 0, log(FREQ or 1) - logtotal): for the tests' bit-for-bit check
PyObject* PyWordWeight(PyObject*, PyObject* arg) {
  if (!CheckReady() || !ReadText(arg, tl_text)) return nullptr;
  int64_t node = 0;
  for (uint32_t c : tl_text) {
    node = g.trie.Find(static_cast<uint32_t>(node), c);
    if (node < 0) return Py_BuildValue("(OOd)", Py_False, Py_False, 0.0 - g.logtotal);
  }
  const uint8_t f = g.trie.flags[node];
  return Py_BuildValue("(OOd)", (f & 1) ? Py_True : Py_False, (f & 2) ? Py_True : Py_False, g.trie.weight[node]);
}

// ---- MinHash of a normalised text (paddle_pangu/data/dedup.py: the same integers as its numpy path) ------
// shingle hash: Horner over the k code points of each window with base 0x100000001B3 (mod 2^64), murmur3
// fmix64, low 32 bits; then per permutation the minimum over the windows of datasketch's scheme:
// "affine32": a * fmix32(h) + b mod 2^32; "legacy": ((a * h + b) mod 2^64) mod (2^61 - 1), low 32 bits.
// Duplicate windows do not change a minimum, so the set (np.unique) is not formed.
inline uint64_t Fmix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  h *= 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 33;
  return h;
}

// min over i of a * h[i] + b mod 2^32; cloned for AVX2 (chosen at run time, one build for every x86-64 CPU)
__attribute__((target_clones("avx2", "default"), optimize("O3"))) uint32_t MinAffine32(uint32_t a, uint32_t b,
                                                                                    const uint32_t* h, size_t n) {
  uint32_t best = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t v = a * h[i] + b;
    best = v < best ? v : best;
  }
  return best;
}

// minhash(text, k, a: bytes, b: bytes, legacy: bool, fmix32: (s1, m1, s2, m2, s3)) -> bytes of the values
PyObject* PyMinhash(PyObject*, PyObject* args) {
  PyObject* text;
  int k, legacy;
  Py_buffer abuf, bbuf;
  unsigned int s1, s2, s3;
  unsigned long m1, m2;
  if (!PyArg_ParseTuple(args, "Uiy*y*p(IkIkI)", &text, &k, &abuf, &bbuf, &legacy, &s1, &m1, &s2, &m2, &s3))
    return nullptr;
  PyObject* result = nullptr;
  const size_t width = legacy ? 8 : 4;
  if (abuf.len != bbuf.len || abuf.len % width != 0 || k < 1) {
    PyErr_SetString(PyExc_ValueError, "minhash: a and b must be equal-length arrays of the scheme's dtype");
  } else if (ReadText(text, tl_text)) {
    const size_t perm = static_cast<size_t>(abuf.len) / width, n_cp = tl_text.size();
    const size_t kk = std::min(static_cast<size_t>(k), n_cp);
    const size_t n = n_cp ? n_cp - kk + 1 : 0;
    std::vector<uint32_t> shingles(n);
    for (size_t i = 0; i < n; ++i) {
      uint64_t h = 0;
      for (size_t j = 0; j < kk; ++j) h = h * 0x100000001B3ull + tl_text[i + j];
      shingles[i] = static_cast<uint32_t>(Fmix64(h));
    }
    if (legacy) {
      const uint64_t* a = static_cast<const uint64_t*>(abuf.buf);
      const uint64_t* b = static_cast<const uint64_t*>(bbuf.buf);
      const uint64_t p = (uint64_t(1) << 61) - 1;
      std::vector<uint64_t> out(perm, 0xFFFFFFFFull);
      for (size_t q = 0; q < perm; ++q) {
        uint64_t best = 0xFFFFFFFFull;
        for (size_t i = 0; i < n; ++i) {
          const uint64_t v = ((a[q] * shingles[i] + b[q]) % p) & 0xFFFFFFFFull;
          best = v < best ? v : best;
        }
        out[q] = best;
      }
      result = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(out.data()), perm * 8);
    } else {
      const uint32_t* a = static_cast<const uint32_t*>(abuf.buf);
      const uint32_t* b = static_cast<const uint32_t*>(bbuf.buf);
      for (auto& h : shingles) {  // datasketch's fmix pre-mix (constants passed from the installed datasketch)
        h ^= h >> s1;
        h *= static_cast<uint32_t>(m1);
        h ^= h >> s2;
        h *= static_cast<uint32_t>(m2);
        h ^= h >> s3;
      }
      std::vector<uint32_t> out(perm);
      for (size_t q = 0; q < perm; ++q) out[q] = MinAffine32(a[q], b[q], shingles.data(), n);
      result = PyBytes_FromStringAndSize(reinterpret_cast<const char*>(out.data()), perm * 4);
    }
  }
  PyBuffer_Release(&abuf);
  PyBuffer_Release(&bbuf);
  return result;
}

PyMethodDef kMethods[] = {
    {"minhash", PyMinhash, METH_VARARGS, "minhash(text, k, a, b, legacy, fmix32) -> bytes (see dedup.py)"},
    {"init", PyInit, METH_VARARGS, "init(FREQ, logtotal, start_P, trans_P, emit_P, MIN_FLOAT) -> trie nodes"},
    {"cut", PyCut, METH_O, "cut(text) -> list[str], identical to jieba.cut(text, cut_all=False, HMM=True)"},
    {"segment", PySegment, METH_O, "segment(text) -> the PanGu pre-SentencePiece string (REF Tokenizer)"},
    {"word_weight", PyWordWeight, METH_O, "word_weight(word) -> (in_freq, positive, weight)"},
    {"dump", PyDump, METH_NOARGS, "dump() -> bytes of the initialised tables (fastseg's cache)"},
    {"restore", PyRestore, METH_VARARGS, "restore(buffer) -> trie nodes; the tables of a dump(), checked"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_pangu_jieba", "exact compiled jieba 0.42.1 cut (HMM=True)", -1,
                       kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__pangu_jieba(void) { return PyModule_Create(&kModule); }
