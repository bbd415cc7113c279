// Client ids and free text from peers: common/base/peer_text.h.
#include "common/base/peer_text.h"

#include <gtest/gtest.h>

#include <string>

namespace fedtail {
namespace {

TEST(ValidateClientId, AcceptsPlainIdsAndRefusesTheRestWithoutEchoingThem) {
  EXPECT_TRUE(validate_client_id("client-0", "id").ok());
  EXPECT_TRUE(validate_client_id("Site_A.hospital-7", "id").ok());
  EXPECT_TRUE(validate_client_id(std::string(kMaxClientIdLength, 'a'), "id").ok());

  Status empty = validate_client_id("", "join: client id");
  EXPECT_EQ(empty.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.message().find("join: client id: must not be empty"), std::string::npos);

  Status longer = validate_client_id(std::string(kMaxClientIdLength + 1, 'a'), "id");
  EXPECT_NE(longer.message().find("longer than 64"), std::string::npos) << longer.message();
  EXPECT_EQ(longer.message().find(std::string(65, 'a')), std::string::npos);

  for (const std::string bad : {std::string("evil\nline"), std::string("red\x1b[31m"),
                                std::string("a b"), std::string("../x"), std::string("a\0b", 3)}) {
    Status s = validate_client_id(bad, "id");
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("may hold only"), std::string::npos) << s.message();
    EXPECT_EQ(s.message().find(bad), std::string::npos);  // not echoed
  }
  EXPECT_NE(validate_client_id(".hidden", "id").message().find("must not start with '.'"),
            std::string::npos);
}

TEST(BoundedText, CutsMarksAndNeutralisesControlCharacters) {
  EXPECT_EQ(bounded_text("disk full"), "disk full");
  EXPECT_EQ(bounded_text("line\nbreak\x1b[2J\x7f"), "line?break?[2J?");
  EXPECT_EQ(bounded_text(std::string(10, 'x'), 4), "xxxx [... 6 more bytes cut]");
  const std::string big(1 << 20, 'E');
  const std::string cut = bounded_text(big);
  EXPECT_EQ(cut.substr(0, kMaxPeerTextBytes), big.substr(0, kMaxPeerTextBytes));
  EXPECT_EQ(cut.substr(kMaxPeerTextBytes),
            " [... " + std::to_string(big.size() - kMaxPeerTextBytes) + " more bytes cut]");
  // A cut never splits a UTF-8 sequence: "é" is 2 bytes (0xC3 0xA9).
  EXPECT_EQ(bounded_text("ab\xC3\xA9", 3), "ab [... 2 more bytes cut]");
  EXPECT_EQ(bounded_text("ab\xC3\xA9", 4), "ab\xC3\xA9");
  EXPECT_EQ(bounded_text("", 4), "");
}

}  // namespace
}  // namespace fedtail
