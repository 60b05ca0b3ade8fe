// The mask streams' AES-128-CTR (src/comm/aes_ctr.h) against OpenSSL's
// EVP_aes_128_ctr: the same bytes for random keys and nonces, from any block
// and any word, across the 32-block stride of the VAES loop and its tail;
// the keystream added to and subtracted from words.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <array>
#include <cstring>
#include <random>
#include <vector>

#include "aes_ctr.h"

namespace dagr::detail {
namespace {

// OpenSSL's keystream: blocks [first, first + count) of the stream (nonce ‖ 0).
std::vector<std::uint8_t> reference(const std::array<std::uint8_t, 16>& key, std::uint64_t nonce,
                                    std::uint64_t first, std::size_t count) {
  std::uint8_t iv[16];
  for (int b = 0; b < 8; ++b) {
    iv[b] = static_cast<std::uint8_t>(nonce >> (56 - 8 * b));
    iv[8 + b] = static_cast<std::uint8_t>(first >> (56 - 8 * b));
  }
  std::vector<std::uint8_t> zeros(16 * count), out(16 * count);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int produced = 0;
  EXPECT_EQ(EVP_EncryptInit_ex(ctx, EVP_aes_128_ctr(), nullptr, key.data(), iv), 1);
  EXPECT_EQ(EVP_EncryptUpdate(ctx, out.data(), &produced, zeros.data(), static_cast<int>(zeros.size())), 1);
  EVP_CIPHER_CTX_free(ctx);
  return out;
}

TEST(AesCtr128, EqualsOpenSSL) {
  std::printf("AES-128-CTR on %s\n", AesCtr128::vectorised() ? "VAES (AVX-512)" : "OpenSSL");
  std::mt19937_64 random(20261129);
  for (int trial = 0; trial < 40; ++trial) {
    std::array<std::uint8_t, 16> key;
    for (auto& b : key) b = static_cast<std::uint8_t>(random());
    const AesCtr128 aes(key);
    const std::uint64_t nonce = trial < 2 ? trial : random();
    const std::uint64_t first = trial % 3 == 0 ? 0 : random() % 100000;
    const std::size_t count = std::vector<std::size_t>{1, 3, 4, 31, 32, 33, 64, 97, 1000, 4096}[trial % 10];
    const std::vector<std::uint8_t> want = reference(key, nonce, first, count + 1);

    std::vector<std::uint8_t> got(16 * count);
    aes.blocks(nonce, first, count, got.data());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size()), 0) << "blocks, trial " << trial;

    // Words from any offset: the tail of a cut block, whole blocks, the head of another.
    const std::size_t skip = trial % 4, words = 4 * count - skip;
    std::vector<std::uint32_t> w(words);
    aes.words(nonce, 4 * first + skip, words, w.data());
    EXPECT_EQ(std::memcmp(w.data(), want.data() + 4 * skip, 4 * words), 0) << "words, trial " << trial;

    // The same words added to and subtracted from data, from an offset that
    // also cuts the last block (the masked head and tail of the VAES path).
    const std::size_t cut = words > 2 ? words - trial % 3 : words;
    std::vector<std::uint32_t> data(cut), sum(cut), difference(cut);
    for (auto& x : data) x = static_cast<std::uint32_t>(random());
    sum = data;
    difference = data;
    aes.add_words(nonce, 4 * first + skip, cut, sum.data(), false);
    aes.add_words(nonce, 4 * first + skip, cut, difference.data(), true);
    for (std::size_t i = 0; i < cut; ++i) {
      ASSERT_EQ(sum[i], data[i] + w[i]) << "add_words, trial " << trial << ", word " << i;
      ASSERT_EQ(difference[i], data[i] - w[i]) << "add_words (subtract), trial " << trial << ", word " << i;
    }
  }
}

}  // namespace
}  // namespace dagr::detail
