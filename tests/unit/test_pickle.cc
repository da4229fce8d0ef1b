#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "pickle/pickler.h"
#include "pickle/unpickler.h"
#include "pickle/value.h"

using namespace ckptstream;
using namespace ckptstream::pickle;
using namespace std::string_literals;

namespace {

std::vector<std::byte> bytes_of(std::string_view s) {
  std::vector<std::byte> out(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) out[i] = static_cast<std::byte>(s[i]);
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Mirrors canon() of tools/fixtures/make_torch_fixtures.py.
std::string canon(const Value& v) {
  auto join = [](std::span<const ValuePtr> items) {
    std::string out;
    for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + canon(*items[i]);
    return out;
  };
  switch (v.kind) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return v.boolean ? "True" : "False";
    case Kind::kInt:
    case Kind::kBigInt:
      return v.int_decimal();
    case Kind::kFloat: {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.17g", v.real);
      return buf;
    }
    case Kind::kString:
      return "'" + std::string(v.text()) + "'";
    case Kind::kBytes: {
      std::string out = "b'";
      char buf[3];
      for (char c : v.text()) {
        std::snprintf(buf, sizeof buf, "%02x", static_cast<unsigned char>(c));
        out += buf;
      }
      return out + "'";
    }
    case Kind::kTuple:
      return "(" + join(v.items()) + ")";
    case Kind::kList:
      return "[" + join(v.items()) + "]";
    case Kind::kSet:
    case Kind::kFrozenSet:
      return "{" + join(v.items()) + "}";
    case Kind::kDict: {
      std::string out = "{";
      for (std::size_t i = 0; i < v.entries().size(); ++i)
        out +=
            (i ? ", " : "") + canon(*v.entries()[i].first) + ": " + canon(*v.entries()[i].second);
      return out + "}";
    }
    case Kind::kGlobal:
      return "<" + v.qualified_name() + ">";
    case Kind::kObject:
      return "<object " + v.callable_name() + ">";
    case Kind::kPersistentId:
      return "<pid " + canon(*v.args) + ">";
  }
  return "?";
}

Result<Unpickled> run(std::string_view pickle_bytes) {
  auto data = bytes_of(pickle_bytes);
  return unpickle(data);
}

// The value; it keeps the arena of the whole graph alive.
std::shared_ptr<Value> ok(std::string_view pickle_bytes) {
  auto r = run(pickle_bytes);
  if (!r.ok()) FAIL(r.error().message);
  return r->value;
}

std::string error_of(std::string_view pickle_bytes) {
  auto r = run(pickle_bytes);
  REQUIRE(!r.ok());
  return r.error().message;
}

// String literals keep their embedded NUL bytes.
template <std::size_t N>
std::shared_ptr<Value> ok(const char (&literal)[N]) {
  return ok(std::string_view(literal, N - 1));
}
template <std::size_t N>
std::string error_of(const char (&literal)[N]) {
  return error_of(std::string_view(literal, N - 1));
}

}  // namespace

TEST_CASE("pickles of protocols 0-5 written by Python give the same plain values") {
  std::string expected = read_file(CKPT_FIXTURES "/torch/pickle_expected.txt");
  while (!expected.empty() && expected.back() == '\n') expected.pop_back();
  for (int proto = 0; proto <= 5; ++proto) {
    CAPTURE(proto);
    std::string data =
        read_file(CKPT_FIXTURES "/torch/pickle_proto" + std::to_string(proto) + ".pkl");
    auto r = run(data);
    REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
    CHECK(r->end == data.size());
    CHECK(canon(*r->value) == expected);
  }
}

TEST_CASE("integers: BININT family, LONG1/LONG4 and protocol-0 text") {
  CHECK(ok("\x80\x02K\xff.")->integer == 255);
  CHECK(ok(std::string("\x80\x02M\x01\x02.", 6))->integer == 0x0201);
  CHECK(ok("\x80\x02J\xfe\xff\xff\xff.")->integer == -2);
  CHECK(ok(std::string("\x80\x02\x8a\x00.", 5))->integer == 0);
  CHECK(ok("\x80\x02\x8a\x01\xff.")->integer == -1);
  // 2**63 needs 9 bytes: a BigInt.
  auto big = ok(std::string("\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.", 14));
  CHECK(big->kind == Kind::kBigInt);
  CHECK(big->int_decimal() == "9223372036854775808");
  auto min = ok(std::string("\x80\x02\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.", 13));
  CHECK(min->integer == INT64_MIN);
  CHECK(ok(std::string("\x8b\x02\x00\x00\x00\x00\x01.", 8))->integer == 256);
  CHECK(ok("I42\n.")->integer == 42);
  CHECK(ok("I01\n.")->kind == Kind::kBool);
  CHECK(ok("L-12345678901234567890123L\n.")->int_decimal() == "-12345678901234567890123");
  CHECK(error_of("\x8b\xff\xff\xff\xff.").find("negative length") != std::string::npos);
}

TEST_CASE("floats: BINFLOAT is big-endian, FLOAT is text") {
  CHECK(ok("G\x3f\xf8\x00\x00\x00\x00\x00\x00."s)->real == 1.5);
  CHECK(ok("F-0.25\n.")->real == -0.25);
}

TEST_CASE("strings and bytes of every width") {
  CHECK(ok(std::string("X\x03\x00\x00\x00"
                       "abc.",
                       9))
            ->text() == "abc");
  CHECK(ok("\x8c\x02hi.")->text() == "hi");
  CHECK(ok(std::string("\x8d\x01\x00\x00\x00\x00\x00\x00\x00z.", 11))->text() == "z");
  auto b = ok(std::string("C\x02\x00\xff.", 5));
  CHECK(b->kind == Kind::kBytes);
  CHECK(b->text() == std::string("\x00\xff", 2));
  CHECK(ok(std::string("B\x01\x00\x00\x00q.", 7))->text() == "q");
  CHECK(ok(std::string("\x8e\x01\x00\x00\x00\x00\x00\x00\x00q.", 11))->kind == Kind::kBytes);
  CHECK(ok(std::string("\x96\x01\x00\x00\x00\x00\x00\x00\x00q.", 11))->kind == Kind::kBytes);
  // Python-2 byte strings decode as latin-1.
  CHECK(ok("U\x02\xe9t.")->text() == "\xc3\xa9t");
  CHECK(ok(std::string("T\x01\x00\x00\x00k.", 7))->text() == "k");
  CHECK(ok("S'a\\'b\\n'\n.")->text() == "a'b\n");
  CHECK(ok("Vcaf\xe9 \\u20ac\n.")->text() == "caf\xc3\xa9 \xe2\x82\xac");
  // protocol-2 bytes: _codecs.encode(str, 'latin1')
  auto enc = ok("c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R."s);
  CHECK(enc->kind == Kind::kBytes);
  CHECK(enc->text() == "\xff");
  CHECK(ok("c__builtin__\nbytes\n)R.")->kind == Kind::kBytes);
}

TEST_CASE("containers: tuples, lists, dicts, sets, marks") {
  auto t = ok("(K\x01K\x02t.");
  CHECK(t->kind == Kind::kTuple);
  CHECK(t->items().size() == 2);
  CHECK(ok("K\x01K\x02K\x03\x87.")->items().size() == 3);
  CHECK(ok(").")->items().empty());
  auto l =
      ok("](K\x01K\x02"
         "eK\x03"
         "a.");
  CHECK(canon(*l) == "[1, 2, 3]");
  CHECK(canon(*ok("(K\x01K\x02l.")) == "[1, 2]");
  auto d =
      ok("}(X\x01\x00\x00\x00"
         "aK\x01X\x01\x00\x00\x00"
         "bK\x02uX\x01\x00\x00\x00"
         "aK\x03s."s);
  CHECK(canon(*d) == "{'a': 3, 'b': 2}");  // re-setting a key replaces its value
  REQUIRE(d->find("b"));
  CHECK(d->find("b")->integer == 2);
  CHECK(canon(*ok("(K\x01K\x02"
                  "d.")) == "{1: 2}");
  CHECK(canon(*ok("\x8f(K\x01K\x02\x90.")) == "{1, 2}");
  CHECK(ok("(K\x01\x91.")->kind == Kind::kFrozenSet);
  CHECK(canon(*ok("c__builtin__\nset\n]K\x05"
                  "a\x85R.")) == "{5}");
  CHECK(canon(*ok("K\x01(K\x02K\x03"
                  "1.")) == "1");  // POP_MARK
  CHECK(canon(*ok("K\x01K\x02"
                  "0.")) == "1");  // POP
  CHECK(canon(*ok("K\x01"
                  "2\x86.")) == "(1, 1)");  // DUP
}

TEST_CASE("memo: BINPUT/LONG_BINPUT/MEMOIZE/PUT share one node") {
  auto v = ok("]q\x00h\x00\x86.");
  REQUIRE(v->items().size() == 2);
  CHECK(v->items()[0] == v->items()[1]);
  auto w = ok(std::string("]r\x00\x01\x00\x00j\x00\x01\x00\x00\x86.", 13));
  CHECK(w->items()[0] == w->items()[1]);
  auto m = ok("]\x94h\x00\x86.");
  CHECK(m->items()[0] == m->items()[1]);
  auto p = ok("]p7\ng7\n\x86.");
  CHECK(p->items()[0] == p->items()[1]);
  // Mutation after memoization is seen through every reference.
  auto x =
      ok("]q\x00h\x00K\x01"
         "a\x86.");
  CHECK(x->items()[0]->items().size() == 1);
  // A list containing itself: no crash, no infinite loop.
  auto cyc =
      ok("]q\x00h\x00"
         "a.");
  CHECK(cyc->items()[0] == cyc.get());
}

TEST_CASE("globals and calls stay names and objects; harmless ones become values") {
  auto g = ok("cfoo.bar\nBaz\n.");
  CHECK(g->kind == Kind::kGlobal);
  CHECK(g->qualified_name() == "foo.bar.Baz");
  CHECK(ok("\x8c\x01m\x8c\x01n\x93.")->qualified_name() == "m.n");
  auto od = ok("ccollections\nOrderedDict\n)R.");
  CHECK(od->kind == Kind::kDict);
  CHECK(od->entries().empty());
  CHECK(canon(*ok("ctorch\nSize\nK\x02K\x03\x86\x85R.")) == "(2, 3)");
  auto nested = ok("c__builtin__\ngetattr\ncm\nOuter\nX\x05\x00\x00\x00Inner\x86R."s);
  CHECK(nested->kind == Kind::kGlobal);
  CHECK(nested->name() == "Outer.Inner");
  CHECK(nested->module() == "m");
  CHECK(nested->class_name() == "Inner");
  auto call = ok("cos\nsystem\nX\x02\x00\x00\x00ls\x85R.");  // never executed
  CHECK(call->kind == Kind::kObject);
  CHECK(call->callable_name() == "os.system");
  CHECK(canon(*call->args) == "('ls')");
  auto kw = ok("cm\nC\n)}X\x01\x00\x00\x00kK\x01s\x92."s);
  CHECK(kw->kind == Kind::kObject);
  REQUIRE(kw->kwargs);
  CHECK(kw->kwargs->find("k")->integer == 1);
  auto inst = ok("(K\x01im\nC\n.");
  CHECK(inst->callable_name() == "m.C");
  CHECK(canon(*inst->args) == "(1)");
  auto obj = ok("(cm\nC\nK\x02o.");
  CHECK(obj->callable_name() == "m.C");
  auto rec =
      ok("ccopy_reg\n_reconstructor\n(cm\nC\nc__builtin__\nobject\nNtR}X\x01\x00\x00\x00"
         "aK\x01sb."s);
  CHECK(rec->callable_name() == "m.C");
  CHECK(rec->attr("a")->integer == 1);
}

TEST_CASE("BUILD: dict state, (None, slots), (dict, slots), other states") {
  auto d =
      ok("cm\nC\n)\x81}X\x01\x00\x00\x00"
         "aK\x01sb."s);
  CHECK(d->attr("a")->integer == 1);
  auto slots =
      ok("cm\nC\n)\x81N}X\x01\x00\x00\x00sK\x02s\x86"
         "b."s);
  CHECK(slots->attr("s")->integer == 2);
  auto both =
      ok("cm\nC\n)\x81}X\x01\x00\x00\x00"
         "aK\x01s}X\x01\x00\x00\x00sK\x02s\x86"
         "b."s);
  CHECK(both->attr("a")->integer == 1);
  CHECK(both->attr("s")->integer == 2);
  auto other =
      ok("cm\nC\n)\x81K\x01K\x02\x86"
         "b.");
  CHECK(canon(*other->state) == "(1, 2)");
  CHECK(other->attr("a") == nullptr);
  // Two BUILDs with dicts merge; BUILD on an OrderedDict keeps its attributes aside.
  auto twice =
      ok("cm\nC\n)\x81}X\x01\x00\x00\x00"
         "aK\x01sb}X\x01\x00\x00\x00"
         "bK\x02sb."s);
  CHECK(twice->attr("a")->integer == 1);
  CHECK(twice->attr("b")->integer == 2);
  auto od = ok("ccollections\nOrderedDict\n)R}X\x09\x00\x00\x00_metadataK\x01sb."s);
  CHECK(od->entries().empty());
  CHECK(od->attr("_metadata")->integer == 1);
}

TEST_CASE("persistent ids") {
  auto p = ok("(X\x07\x00\x00\x00storageK\x01tQ."s);
  CHECK(p->kind == Kind::kPersistentId);
  CHECK(canon(*p->args) == "('storage', 1)");
  CHECK(canon(*ok("Pabc\n.")) == "<pid 'abc'>");
}

TEST_CASE("starts at an offset and reports where STOP ended (back-to-back pickles)") {
  std::string two = "\x80\x02K\x07.\x80\x02K\x08.";
  auto data = bytes_of(two);
  auto first = unpickle(data, 0);
  REQUIRE(first.ok());
  CHECK(first->value->integer == 7);
  CHECK(first->end == 5);
  auto second = unpickle(data, first->end);
  REQUIRE(second.ok());
  CHECK(second->value->integer == 8);
  CHECK(second->end == data.size());
  CHECK(!unpickle(data, 100).ok());
}

TEST_CASE("errors are clear and never crash") {
  CHECK(error_of("\x80\x02\xff.") == "pickle: unknown opcode 0xff at offset 2");
  CHECK(error_of("\x80\x02.").find("stack underflow at offset 2") != std::string::npos);
  CHECK(error_of("t.").find("MARK missing") != std::string::npos);
  CHECK(error_of("h\x05.").find("memo index 5 not found") != std::string::npos);
  CHECK(error_of("\x80\x02K\x01").find("truncated") != std::string::npos);
  CHECK(error_of("X\xff\xff\xff\x7f").find("truncated") != std::string::npos);
  CHECK(error_of(std::string("\x8d\xff\xff\xff\xff\xff\xff\xff\xff", 9)).find("truncated") !=
        std::string::npos);
  CHECK(error_of(std::string("\x95\xff\xff\xff\xff\xff\xff\xff\xff", 9)).find("truncated") !=
        std::string::npos);
  CHECK(error_of("K\x01K\x02"
                 "a.")
            .find("APPEND to a int") != std::string::npos);
  CHECK(error_of("}(K\x01u.").find("odd number") != std::string::npos);
  CHECK(error_of("\x80\x09.").find("protocol 9") != std::string::npos);
  CHECK(error_of("\x82\x01.").find("EXT") != std::string::npos);
  CHECK(error_of("(K\x01\x82").find("EXT") != std::string::npos);
  CHECK(error_of("K\x01(\x93.").find("stack underflow") != std::string::npos);  // below the mark
  CHECK(error_of("Ifoo\n.").find("INT") != std::string::npos);
  CHECK(error_of("").find("truncated") != std::string::npos);
  // Every prefix of a real pickle fails cleanly.
  std::string data = read_file(CKPT_FIXTURES "/torch/pickle_proto4.pkl");
  for (std::size_t n = 0; n < data.size(); n += 7) CHECK(!run(data.substr(0, n)).ok());
}

TEST_CASE("deeply nested values are destroyed without recursion") {
  std::string deep = "N";
  deep.append(1'000'000, '\x85');  // ((((None,),),)...)
  deep += ".";
  auto v = ok(deep);
  CHECK(v->kind == Kind::kTuple);
}

TEST_CASE("immutable values are shared nodes; mutating one is an error, as in Python") {
  // ((1, 2), (1, 2)): one node for both inner tuples and for each int.
  auto v = ok("\x80\x02K\x01K\x02\x86K\x01K\x02\x86\x86.");
  REQUIRE(v->items().size() == 2);
  CHECK(v->items()[0] == v->items()[1]);
  CHECK(v->items()[0]->items()[0]->integer == 1);
  CHECK(canon(*v) == "((1, 2), (1, 2))");
  // A tuple holding a mutable value is its own node.
  auto w = ok("\x80\x02]\x85]\x85\x86.");
  CHECK(w->items()[0] != w->items()[1]);
  CHECK(error_of("\x80\x02K\x01}b.").find("BUILD on a int") != std::string::npos);
  CHECK(error_of("\x80\x02)}b.").find("BUILD on a tuple") != std::string::npos);
  CHECK(error_of("\x80\x02N}b.").find("BUILD on a None") != std::string::npos);
}

TEST_CASE("memo: sparse indices, MEMOIZE counting entries, overwrites") {
  // LONG_BINPUT at 2^31, fetched back; then MEMOIZE stores at len(memo) == 1.
  auto v = ok("\x80\x04K\x07r\x00\x00\x00\x80\x30K\x08\x94\x30j\x00\x00\x00\x80h\x01\x86.");
  CHECK(canon(*v) == "(7, 8)");
  // BINPUT over an existing index replaces it.
  CHECK(canon(*ok("K\x01q\x00\x30K\x02q\x00\x30h\x00.")) == "2");
}

TEST_CASE("dict keys follow Python equality, small and large dicts alike") {
  // {1: 'a', True: 'b'} == {1: 'b'}: True == 1.
  CHECK(canon(*ok("}K\x01X\x01\x00\x00\x00"
                  "as\x88X\x01\x00\x00\x00"
                  "bs.")) == "{1: 'b'}");
  // 20 string keys, then key 'k5' set again: still 20 entries, in first-insertion order.
  std::string p = "}(";
  for (int i = 0; i < 20; ++i) {
    std::string k = "k" + std::to_string(i);
    p += "X" + std::string(1, static_cast<char>(k.size())) + std::string(3, '\0') + k + "K" +
         std::string(1, static_cast<char>(i));
  }
  p += "u";
  p += "X\x02\x00\x00\x00k5K\x63s."s;
  auto d = ok(std::string_view(p));
  REQUIRE(d->entries().size() == 20);
  CHECK(d->find("k5")->integer == 99);
  CHECK(d->find("k19")->integer == 19);
  CHECK(d->find("k20") == nullptr);
  CHECK(d->entries()[5].first->text() == "k5");
  // A state dict's worth of keys (the index table grows many times), each key then set again,
  // with a few int keys between: every string key once, the last value, insertion order.
  std::string big = "}(";
  auto key = [](int i) { return "model.layers." + std::to_string(i) + ".weight"; };
  auto put = [&](int i, int value) {
    std::string k = key(i);
    big += "X" + std::string(1, static_cast<char>(k.size())) + std::string(3, '\0') + k + "J";
    for (int b = 0; b < 4; ++b) big += static_cast<char>((value >> (8 * b)) & 0xFF);
  };
  for (int i = 0; i < 5000; ++i) put(i, i);
  big += "K\x07K\x01";  // 7: 1
  for (int i = 0; i < 5000; i += 3) put(i, -i);
  big += "u.";
  auto large = ok(std::string_view(big));
  REQUIRE(large->entries().size() == 5001);
  CHECK(large->entries()[4999].first->text() == key(4999));
  CHECK(large->entries()[5000].first->integer == 7);
  for (int i : {0, 1, 2, 3, 2999, 4998, 4999}) {
    CAPTURE(i);
    REQUIRE(large->find(key(i)));
    CHECK(large->find(key(i))->integer == (i % 3 == 0 ? -i : i));
  }
  CHECK(large->find(key(5000)) == nullptr);
}

TEST_CASE("persistent ids are listed in the order the stream made them") {
  auto data = bytes_of(
      "(X\x01\x00\x00\x00"
      "aQX\x01\x00\x00\x00"
      "bQl."s);
  auto r = unpickle(data);
  REQUIRE(r.ok());
  REQUIRE(r->persistent_ids.size() == 2);
  CHECK(r->persistent_ids[0]->args->text() == "a");
  CHECK(r->persistent_ids[1]->args->text() == "b");
  CHECK(r->value->items()[1] == r->persistent_ids[1]);
}

TEST_CASE("a block pool hands a freed graph's large blocks to the next graph") {
  // A list of 200k small ints: several MiB of arena, so large (mapped) blocks are used.
  std::string p = "](";
  for (int i = 0; i < 200000; ++i) p += "K\x01";
  p += "e.";
  auto data = bytes_of(p);
  auto pool = std::make_shared<BlockPool>();
  {
    auto first = unpickle(data, 0, pool);
    REQUIRE(first.ok());
    CHECK(first->value->items().size() == 200000);
    CHECK(pool->kept() == 0);
  }
  std::size_t kept = pool->kept();
  CHECK(kept > 0);
  auto second = unpickle(data, 0, pool);
  REQUIRE(second.ok());
  CHECK(second->value->items().size() == 200000);
  CHECK(second->value->items()[199999]->integer == 1);
  CHECK(pool->kept() < kept);
}

TEST_CASE("a list or dict subclass keeps what APPENDS or SETITEMS gave it, not both") {
  // m.C() then SETITEMS {'a': 1}: the object holds a map.
  auto dict_like =
      ok("\x80\x02"
         "cm\nC\n)\x81(X\x01\x00\x00\x00"
         "aK\x01u."s);
  REQUIRE(dict_like->kind == Kind::kObject);
  REQUIRE(dict_like->entries().size() == 1);
  CHECK(dict_like->entries()[0].first->text() == "a");
  CHECK(dict_like->items().empty());
  CHECK(dict_like->text().empty());
  // m.C() then APPENDS [1, 2]: a list.
  auto list_like =
      ok("\x80\x02"
         "cm\nC\n)\x81(K\x01K\x02"
         "e."s);
  REQUIRE(list_like->items().size() == 2);
  CHECK(list_like->entries().empty());
  // Both on one object: an error, not a mixed node.
  CHECK(error_of("\x80\x02"
                 "cm\nC\n)\x81(X\x01\x00\x00\x00"
                 "aK\x01u(K\x02"
                 "e."s)
            .find("APPEND to an object that was given dict items") != std::string::npos);
  CHECK(error_of("\x80\x02"
                 "cm\nC\n)\x81(K\x02"
                 "e(X\x01\x00\x00\x00"
                 "aK\x01u."s)
            .find("SETITEM on an object that was appended to") != std::string::npos);
  // Accessors of another kind read as empty.
  auto text = ok("X\x01\x00\x00\x00z."s);
  CHECK(text->items().empty());
  CHECK(text->entries().empty());
  CHECK(text->module().empty());
  auto g = ok("cfoo.bar\nBaz\n.");
  CHECK(g->text().empty());
  CHECK(g->module() == "foo.bar");
  CHECK(g->name() == "Baz");
}

// ---- streaming the saved dict's items (unpickle_streaming) -------------------------------------
namespace {

std::string le32(std::uint32_t n) {
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
  return out;
}
std::string unicode(std::string_view s) {  // BINUNICODE
  return "X" + le32(static_cast<std::uint32_t>(s.size())) + std::string(s);
}
std::string put(std::uint32_t index) {
  return "r" + le32(index);
}  // LONG_BINPUT
std::string get(std::uint32_t index) {
  return "j" + le32(index);
}  // LONG_BINGET

// Records what it is handed, as Python would print it at that moment.
struct Recorder final : RootItemSink {
  std::vector<std::string> items_seen;         // "key: value"
  std::vector<const Value*> first_of_batch;    // the first value of each batch
  std::vector<std::vector<ValuePtr>> batches;  // the values of each batch
  std::size_t releases = 0;
  std::size_t pids = 0;
  Status items(std::span<const ValuePtr> kv,
               std::span<const Value* const> persistent_ids) override {
    first_of_batch.push_back(kv[1]);
    batches.emplace_back();
    for (std::size_t i = 0; i < kv.size(); i += 2) {
      items_seen.push_back(canon(*kv[i]) + ": " + canon(*kv[i + 1]));
      batches.back().push_back(kv[i + 1]);
    }
    pids += persistent_ids.size();
    return {};
  }
  void released(std::span<const Value* const>) override { ++releases; }
};

// {'k<b>_<i>': ['v<b>_<i>'], ...}: `batches` SETITEMS of `per_batch` items each; keys and
// strings memoized in Python's dense numbering (the dict is memo 0).
std::string state_dict_pickle(int batches, int per_batch) {
  std::string p = "\x80\x02}" + put(0);
  std::uint32_t memo = 1;
  for (int b = 0; b < batches; ++b) {
    p += "(";
    for (int i = 0; i < per_batch; ++i) {
      std::string tag = std::to_string(b) + "_" + std::to_string(i);
      const std::uint32_t key_memo = memo, value_memo = memo + 1;
      memo += 2;
      p += unicode("k" + tag) + put(key_memo) + "](" + unicode("v" + tag) + put(value_memo) + "e";
    }
    p += "u";
  }
  return p + ".";
}

}  // namespace

TEST_CASE("streaming hands over the saved dict's items batch by batch and frees each batch") {
  std::string p = state_dict_pickle(4, 3);
  auto data = bytes_of(p);
  Recorder sink;
  auto streamed = unpickle_streaming(data, sink);
  REQUIRE_MESSAGE(streamed.ok(), streamed.error().message);
  auto whole = unpickle(data);
  REQUIRE(whole.ok());
  // The same items, in order; the dict itself stays empty.
  REQUIRE(whole->value->entries().size() == 12);
  REQUIRE(sink.items_seen.size() == 12);
  for (std::size_t i = 0; i < 12; ++i) {
    const auto& [k, v] = whole->value->entries()[i];
    CHECK(sink.items_seen[i] == canon(*k) + ": " + canon(*v));
  }
  CHECK(sink.items_seen[4] == "'k1_1': ['v1_1']");
  CHECK(streamed->value->kind == Kind::kDict);
  CHECK(streamed->value->entries().empty());
  CHECK(streamed->streamed_items == 12);
  // The first batch made the dict and is kept; each later one is freed, and the next batch is
  // built in the same memory.
  CHECK(streamed->released_regions == 3);
  CHECK(sink.releases == 3);
  CHECK(sink.first_of_batch[2] == sink.first_of_batch[1]);
  CHECK(sink.first_of_batch[3] == sink.first_of_batch[1]);
  CHECK(sink.first_of_batch[1] != sink.first_of_batch[0]);
}

TEST_CASE("streaming keeps a batch whose values are fetched or changed later") {
  // Written out exactly: lists memoized right after EMPTY_LIST, as Python does.
  auto build = [](const std::function<std::string(int)>& inside) {
    // Batch b: key memo 3b + 1, list 3b + 2, string 3b + 3.
    std::string p = "\x80\x02}" + put(0);
    for (std::uint32_t b = 0; b < 4; ++b) {
      std::string tag = std::to_string(b) + "_0";
      p += "(" + unicode("k" + tag) + put(3 * b + 1) + "]" + put(3 * b + 2) + "(" +
           unicode("v" + tag) + put(3 * b + 3) + inside(static_cast<int>(b)) + "eu";
    }
    return p + ".";
  };
  SUBCASE("a later GET of a batch's value") {
    // Batch b's list is memo 3b + 2. Batch 3 holds batch 1's list (memo 5).
    auto data = bytes_of(build([](int b) { return b == 3 ? get(5) : std::string(); }));
    Recorder sink;
    auto streamed = unpickle_streaming(data, sink);
    REQUIRE_MESSAGE(streamed.ok(), streamed.error().message);
    CHECK(sink.items_seen[3] == "'k3_0': ['v3_0', ['v1_0']]");
    // Batch 0 (the dict) and batch 1 (fetched later) stay; batches 2 and 3 are freed.
    CHECK(streamed->released_regions == 2);
    CHECK(canon(*sink.batches[1][0]) == "['v1_0']");  // still readable after the parse
  }
  SUBCASE("a batch that changes an older value") {
    // Batch 2 appends a string to batch 1's list (GET, APPEND, POP inside its own list's items);
    // both batches stay.
    auto data = bytes_of(
        build([](int b) { return b == 2 ? get(5) + unicode("added") + "a0" : std::string(); }));
    Recorder sink;
    auto streamed = unpickle_streaming(data, sink);
    REQUIRE_MESSAGE(streamed.ok(), streamed.error().message);
    CHECK(streamed->released_regions == 1);  // batch 3 only
    CHECK(canon(*sink.batches[1][0]) == "['v1_0', 'added']");
    auto whole = unpickle(data);
    REQUIRE(whole.ok());
    CHECK(canon(*whole->value->entries()[1].second) == "['v1_0', 'added']");
  }
}

TEST_CASE("streaming only takes items set on the saved dict itself") {
  // A nested dict's SETITEMS stays in that dict.
  std::string nested = "\x80\x02}(" + unicode("outer") + "}(" + unicode("x") + "K\x01uu.";
  auto data = bytes_of(nested);
  Recorder sink;
  auto r = unpickle_streaming(data, sink);
  REQUIRE_MESSAGE(r.ok(), r.error().message);
  REQUIRE(sink.items_seen.size() == 1);
  CHECK(sink.items_seen[0] == "'outer': {'x': 1}");
  // Items streamed from a dict that the pickle then drops: an error (read it whole instead).
  auto dropped = bytes_of("\x80\x02}(" + unicode("a") + "K\x01u0}.");
  Recorder other;
  auto e = unpickle_streaming(dropped, other);
  REQUIRE(!e.ok());
  CHECK(e.error().message.find("not the pickled object") != std::string::npos);
  CHECK(unpickle(dropped).ok());
  // A list at the bottom of the stack is not a dict: nothing is streamed.
  auto list = bytes_of(
      "\x80\x02](K\x01K\x02"
      "e.");
  Recorder none;
  auto l = unpickle_streaming(list, none);
  REQUIRE(l.ok());
  CHECK(none.items_seen.empty());
  CHECK(l->value->items().size() == 2);
}

// ---- streaming a nested dict's items (RootItemSink::streams_nested) ----------------------------
namespace {

// Streams the items of the dict that is the value of "big", as a DCP .metadata reader does.
struct NestedRecorder final : RootItemSink {
  std::vector<std::string> items_seen;
  std::vector<const Value*> dicts;
  Status items(std::span<const ValuePtr>, std::span<const Value* const>) override {
    return invalid_input("root items");
  }
  void released(std::span<const Value* const>) override {}
  bool streams_nested(std::string_view key) override { return key == "big"; }
  Status nested_items(std::string_view key, const Value* dict,
                      std::span<const ValuePtr> kv) override {
    CHECK(key == "big");
    dicts.push_back(dict);
    for (std::size_t i = 0; i < kv.size(); i += 2)
      items_seen.push_back(canon(*kv[i]) + ": " + canon(*kv[i + 1]));
    return {};
  }
};

// mod.Meta() with BUILD state {'big': {'k<b>_<i>': ['v<b>_<i>'], ...}, 'after': <tail>}: the
// items of 'big' in `batches` SETITEMS of `per_batch`; batch b's keys are memo 1 + 2(b·n + i),
// its lists memo 2 + 2(b·n + i) (the dict 'big' is memo 0). `tail` is pickled after the dict.
std::string nested_pickle(int batches, int per_batch, const std::string& tail) {
  std::string p =
      "\x80\x02"
      "cmod\nMeta\n)\x81}(" +
      unicode("big") + "}" + put(0);
  std::uint32_t memo = 1;
  for (int b = 0; b < batches; ++b) {
    p += "(";
    for (int i = 0; i < per_batch; ++i) {
      std::string tag = std::to_string(b) + "_" + std::to_string(i);
      p += unicode("k" + tag) + put(memo) + "]" + put(memo + 1) + "(" + unicode("v" + tag) + "e";
      memo += 2;
    }
    p += "u";
  }
  return p + unicode("after") + tail + "ub.";
}

std::string state_text(const Value& object) {
  REQUIRE(object.state);
  return canon(*object.state);
}

}  // namespace

TEST_CASE("nested streaming: a named dict's items batch by batch, freed, strings copied out") {
  // 'after' is the key of batch 2's first item, fetched by GET once batch 2 is freed: its text
  // must survive (copied out of the batch), as must the result's other values.
  const std::uint32_t batch2_key = 1 + 2 * (2 * 3);
  auto data = bytes_of(nested_pickle(4, 3, get(batch2_key)));
  NestedRecorder sink;
  auto streamed = unpickle_streaming(data, sink);
  REQUIRE_MESSAGE(streamed.ok(), streamed.error().message);
  auto whole = unpickle(data);
  REQUIRE(whole.ok());
  const Value* big = whole->value->attr("big");
  REQUIRE(big);
  REQUIRE(big->entries().size() == 12);
  REQUIRE(sink.items_seen.size() == 12);
  for (std::size_t i = 0; i < 12; ++i) {
    const auto& [k, v] = big->entries()[i];
    CHECK(sink.items_seen[i] == canon(*k) + ": " + canon(*v));
  }
  CHECK(streamed->streamed_items == 12);
  CHECK(streamed->released_regions == 3);  // the first batch made the dict: kept
  REQUIRE(streamed->value->attr("big"));
  CHECK(streamed->value->attr("big")->entries().empty());
  CHECK(streamed->value->attr("big") == sink.dicts.front());
  CHECK(canon(*streamed->value->attr("after")) == "'k2_0'");
  CHECK(state_text(*streamed->value) == "{'big': {}, 'after': 'k2_0'}");
}

TEST_CASE("nested streaming keeps a batch whose container is fetched, and not a dict fetched") {
  SUBCASE("a later GET of a list made in a batch keeps that batch") {
    const std::uint32_t batch1_list = 2 + 2 * 3;
    auto data = bytes_of(nested_pickle(4, 3, get(batch1_list)));
    NestedRecorder sink;
    auto streamed = unpickle_streaming(data, sink);
    REQUIRE_MESSAGE(streamed.ok(), streamed.error().message);
    CHECK(streamed->released_regions == 2);  // batches 2 and 3
    CHECK(canon(*streamed->value->attr("after")) == "['v1_0']");
  }
  SUBCASE("a later GET of the dict itself: not streamed, read as Python does") {
    auto data = bytes_of(nested_pickle(3, 2, get(0)));
    NestedRecorder sink;
    auto streamed = unpickle_streaming(data, sink);
    REQUIRE_MESSAGE(streamed.ok(), streamed.error().message);
    CHECK(sink.items_seen.empty());
    CHECK(streamed->streamed_items == 0);
    auto whole = unpickle(data);
    REQUIRE(whole.ok());
    CHECK(state_text(*streamed->value) == state_text(*whole->value));
    CHECK(streamed->value->attr("big")->entries().size() == 6);
  }
  SUBCASE("a sink that names no dict streams nothing") {
    auto data = bytes_of(nested_pickle(3, 2, unicode("x")));
    Recorder root_only;  // streams root dicts only; the root here is an object
    auto r = unpickle_streaming(data, root_only);
    REQUIRE(r.ok());
    CHECK(root_only.items_seen.empty());
    CHECK(r->value->attr("big")->entries().size() == 6);
  }
}

// The writer (pickler.h): what CPython's protocol-2 pickler writes, byte for byte, and what the
// reading VM reads back. A Megatron-style args Namespace: floats, None, bools, nested dicts, lists.
TEST_CASE("pickler: CPython's bytes for a dict of a float, and a Namespace read back") {
  {
    // pickle.dumps({"a": 1.5}, protocol=2)
    pickle::Pickler p;
    p.proto();
    p.empty_dict();
    p.string("a");
    p.floating(1.5);
    p.op(pickle::opcode::kSetItem);
    p.stop();
    CHECK(p.take() ==
          "\x80\x02}q\x00X\x01\x00\x00\x00"
          "aq\x01G?\xf8\x00\x00\x00\x00\x00\x00s."s);
  }
  {
    // pickle.dumps((70000, -2, 2**40, (1, 2, 3, 4)), protocol=2)
    pickle::Pickler p;
    p.proto();
    p.mark();
    p.integer(70000);
    p.integer(-2);
    p.integer(1LL << 40);
    p.int_tuple({1, 2, 3, 4});
    p.op(pickle::opcode::kTuple);
    p.put();
    p.stop();
    CHECK(p.take() ==
          "\x80\x02(J\x70\x11\x01\x00J\xfe\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01"
          "(K\x01K\x02K\x03K\x04tq\x00tq\x01."s);
  }
  // argparse.Namespace(lr=3e-4, tp=2, bf16=True, seq=None, layers=[0, 1], extra={"k": 0.5}),
  // as CPython writes it: NEWOBJ of the class, then BUILD with its __dict__.
  pickle::Pickler p;
  p.proto();
  p.global("argparse", "Namespace");
  p.op(pickle::opcode::kEmptyTuple);
  p.op(pickle::opcode::kNewObj);
  p.put();
  p.empty_dict();
  p.mark();
  p.string("lr");
  p.floating(3e-4);
  p.string("tp");
  p.integer(2);
  p.string("bf16");
  p.boolean(true);
  p.string("seq");
  p.none();
  p.string("layers");
  p.empty_list();
  p.mark();
  p.integer(0);
  p.integer(1);
  p.op(pickle::opcode::kAppends);
  p.string("extra");
  p.empty_dict();
  p.string("k");
  p.floating(0.5);
  p.op(pickle::opcode::kSetItem);
  p.op(pickle::opcode::kSetItems);
  p.op(pickle::opcode::kBuild);
  p.stop();
  auto ns = ok(p.take());
  CHECK(ns->callable_name() == "argparse.Namespace");
  CHECK(ns->attr("lr")->as_float() == 3e-4);
  CHECK(ns->attr("tp")->as_int() == 2);
  CHECK(ns->attr("bf16")->as_bool() == true);
  CHECK(ns->attr("seq")->kind == Kind::kNone);
  CHECK(canon(*ns->attr("layers")) == "[0, 1]");
  CHECK(ns->attr("extra")->find("k")->as_float() == 0.5);
}
