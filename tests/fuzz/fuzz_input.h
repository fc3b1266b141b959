// The fuzz targets' input reader: little-endian fields, first byte lowest, as
// tests/fuzz/make_corpus.py writes them (struct.pack('<...')); zeros past the end.
#ifndef VKRT_TESTS_FUZZ_FUZZ_INPUT_H_
#define VKRT_TESTS_FUZZ_FUZZ_INPUT_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>

namespace vkrt_fuzz {

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool Empty() const { return pos_ >= size_; }
  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  // Byte by byte in sequence: in `U8() | (U8() << 8)` the order of the two reads would be
  // the compiler's choice, and gcc's replay and clang's fuzzer could read one input apart.
  uint64_t Le(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(U8()) << (8 * i);
    return v;
  }
  uint16_t U16() { return static_cast<uint16_t>(Le(2)); }
  uint32_t U32() { return static_cast<uint32_t>(Le(4)); }
  uint64_t U64() { return Le(8); }
  // Copies up to `n` bytes of the input into `out`, zero-filling past the end.
  void Bytes(uint8_t* out, size_t n) {
    if (n == 0) return;  // `out` may be null then
    const size_t have = std::min(n, size_ - std::min(pos_, size_));
    if (have > 0) memcpy(out, data_ + pos_, have);
    memset(out + have, 0, n - have);
    pos_ += have;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace vkrt_fuzz

#endif  // VKRT_TESTS_FUZZ_FUZZ_INPUT_H_
