#include "common/base/json_reader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace fedtail {
namespace {

struct Options {
  double lr = 0.1;
  int epochs = 1;
  bool flag = false;
  std::string name = "x";
  std::vector<int> ids;
};

Status parse(const nlohmann::json& j, Options* o) {
  JsonReader r(j, "config.local");
  r.read("lr", &o->lr);
  r.read_required("epochs", &o->epochs);
  r.read("flag", &o->flag);
  r.read_enum("name", &o->name, {"x", "y"});
  r.read("ids", &o->ids);
  r.check(o->lr > 0, "lr", "must be > 0 (got " + std::to_string(o->lr) + ")");
  return r.finish();
}

TEST(JsonReaderTest, ReadsFieldsAndKeepsDefaults) {
  Options o;
  ASSERT_TRUE(parse(nlohmann::json{{"epochs", 3}, {"ids", {1, 2}}}, &o).ok());
  EXPECT_EQ(o.epochs, 3);
  EXPECT_DOUBLE_EQ(o.lr, 0.1);
  EXPECT_EQ(o.ids, (std::vector<int>{1, 2}));
}

TEST(JsonReaderTest, WrongTypeNamesThePath) {
  Options o;
  Status s = parse(nlohmann::json{{"epochs", 1}, {"lr", "0.1"}}, &o);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "config.local.lr: expected a number (got \"0.1\")");
}

TEST(JsonReaderTest, MissingRequiredField) {
  Options o;
  EXPECT_EQ(parse(nlohmann::json::object(), &o).message(),
            "config.local.epochs: missing required field");
}

TEST(JsonReaderTest, UnknownKeyIsRejected) {
  Options o;
  EXPECT_EQ(parse(nlohmann::json{{"epochs", 1}, {"lrr", 0.1}}, &o).message(),
            "config.local.lrr: unknown key");
}

TEST(JsonReaderTest, ChecksAndEnumsNameTheField) {
  Options o;
  EXPECT_EQ(parse(nlohmann::json{{"epochs", 1}, {"lr", -1}}, &o).message(),
            "config.local.lr: must be > 0 (got -1.000000)");
  EXPECT_EQ(parse(nlohmann::json{{"epochs", 1}, {"name", "z"}}, &o).message(),
            "config.local.name: must be one of x, y (got \"z\")");
  EXPECT_EQ(parse(nlohmann::json{{"epochs", 1.5}}, &o).message(),
            "config.local.epochs: expected an integer (got 1.5)");
  EXPECT_EQ(parse(nlohmann::json{{"epochs", 1}, {"ids", {1, "a"}}}, &o).message(),
            "config.local.ids[1]: expected an integer (got \"a\")");
}

TEST(JsonReaderTest, NonObjectIsRejected) {
  JsonReader r(nlohmann::json::array(), "config.data");
  EXPECT_EQ(r.finish().message(), "config.data: expected an object (got array)");
}

TEST(JsonReaderTest, ChildReportsNestedPath) {
  nlohmann::json j = {{"augment", {{"flip", 3}}}};
  JsonReader r(j, "config.local");
  JsonReader child = r.child("augment");
  bool flip = false;
  child.read("flip", &flip);
  r.absorb(child.finish());
  EXPECT_EQ(r.finish().message(), "config.local.augment.flip: expected true or false (got 3)");
}

TEST(JsonReaderTest, LoadFileReportsMissingAndInvalid) {
  EXPECT_EQ(load_json_file("/nonexistent/x.json").status().code(), StatusCode::kNotFound);
  const std::string path = std::string(FEDTAIL_TEST_TMP) + "/bad.json";
  std::filesystem::create_directories(FEDTAIL_TEST_TMP);
  std::ofstream(path) << "{\"a\": }";
  auto r = load_json_file(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bad.json: not valid JSON at byte"), std::string::npos);
}

}  // namespace
}  // namespace fedtail
