// `ckptstream inspect PATH...`: the tensors of torch.save and safetensors files, or of every such
// file in a directory: name, dtype, shape, bytes, file and byte offset (plus DTensor placement).
#include <algorithm>
#include <cstdio>
#include <sstream>

#include "cli/commands.h"
#include "cli/progress.h"
#include "core/interrupt.h"
#include "core/json_text.h"
#include "formats/detect.h"
#include "io/input_file.h"
#include "safetensors/safetensors.h"
#include "torch/torch_checkpoint.h"

namespace ckptstream::cli {
namespace fs = std::filesystem;
namespace {

struct Row {
  std::string name;
  DType dtype;
  Shape shape;
  std::uint64_t bytes = 0;
  std::uint64_t offset = 0;  // absolute offset of the first byte in the file
  std::string extra;         // strides / DTensor notes
  std::string extra_json;    // the same, as JSON members (with a leading comma)
};

struct Listing {
  fs::path path;
  std::string format;
  std::vector<Row> rows;
};

Result<Listing> list_torch(const fs::path& path) {
  CKPT_ASSIGN_OR_RETURN(auto ckpt, read_torch_file(path));
  Listing listing{
      path, ckpt.format == TorchCheckpoint::Format::kZip ? "torch-zip" : "torch-legacy", {}};
  for (const auto& t : ckpt.tensors) {
    const auto& storage = ckpt.storages[t.storage];
    Row row{
        t.name,
        t.dtype,
        t.shape,
        static_cast<std::uint64_t>(numel(t.shape)) * element_size(t.dtype),
        storage.file_offset + static_cast<std::uint64_t>(t.storage_offset) * element_size(t.dtype),
        "",
        ""};
    if (!is_contiguous(t.shape, t.strides)) {
      row.extra += " strides=" + shape_text(t.strides);
    }
    row.extra_json += ",\"strides\":" + shape_text(t.strides) +
                      ",\"storage_offset\":" + std::to_string(t.storage_offset) +
                      ",\"storage_key\":" + json_quote(storage.key);
    if (t.is_parameter) row.extra += " parameter";
    if (!t.subclass.empty() && !t.dtensor) row.extra += " subclass=" + t.subclass;
    if (t.dtensor) {
      std::string placements, placements_json;
      for (std::size_t i = 0; i < t.dtensor->placements.size(); ++i) {
        placements += (i ? ", " : "") + to_string(t.dtensor->placements[i]);
        placements_json += (i ? "," : "") + json_quote(to_string(t.dtensor->placements[i]));
      }
      row.extra += " dtensor global=" + shape_text(t.dtensor->global_shape) + " placements=(" +
                   placements + ") mesh=" + shape_text(t.dtensor->mesh->shape);
      row.extra_json += ",\"dtensor\":{\"global_shape\":" + shape_text(t.dtensor->global_shape) +
                        ",\"placements\":[" + placements_json +
                        "],\"mesh_shape\":" + shape_text(t.dtensor->mesh->shape) + "}";
    }
    listing.rows.push_back(std::move(row));
  }
  return listing;
}

Result<Listing> list_safetensors(const fs::path& path) {
  CKPT_ASSIGN_OR_RETURN(auto file, InputFile::open(path));
  CKPT_ASSIGN_OR_RETURN(auto header, safetensors::read_header(file));
  Listing listing{path, "safetensors", {}};
  for (const auto& e : header.tensors)
    listing.rows.push_back(Row{e.name, e.dtype, e.shape, e.data_end - e.data_begin,
                               header.data_start + e.data_begin, "", ""});
  return listing;
}

Result<Listing> list_file(const fs::path& path) {
  CKPT_ASSIGN_OR_RETURN(auto kind, detect_file_kind(path));
  switch (kind) {
    case FileKind::kTorchZip:
    case FileKind::kTorchLegacy:
      return list_torch(path);
    case FileKind::kSafetensors:
      return list_safetensors(path);
    case FileKind::kOther:
      break;
  }
  return invalid_input(path.string() + ": neither a torch.save file nor safetensors");
}

bool has_checkpoint_suffix(const std::string& name) {
  for (std::string_view suffix : {".pt", ".pth", ".bin", ".safetensors", ".distcp", ".ckpt"})
    if (name.ends_with(suffix)) return true;
  return false;
}

// What `inspect` found: the files it could list, and every file it could not (each reported,
// and the exit code then says so).
struct Inspection {
  std::vector<Listing> listings;
  std::vector<Error> problems;
  std::vector<std::string> notes;  // hints for the user (stderr), not problems
};

// A directory's files, in name order: every torch or safetensors file is listed; a file that is
// named like one or cannot even be read (permission denied, a FIFO, a device) is a problem; other
// files (config.json, notes) are not checkpoints and are passed over.
void list_directory(const fs::path& dir, Inspection& out, const InterruptFlag* interrupt) {
  std::error_code ec;
  std::vector<fs::path> entries;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    entries.push_back(it->path());
  if (ec) {
    out.problems.push_back(io_error(dir.string() + ": cannot list: " + ec.message()));
    return;
  }
  std::sort(entries.begin(), entries.end());
  std::size_t listed_before = out.listings.size();
  std::size_t subdirectories = 0;
  for (const auto& path : entries) {
    if (interrupt_requested(interrupt)) return;
    std::error_code type_ec;
    auto status = fs::status(path, type_ec);
    if (!type_ec && fs::is_directory(status)) {
      ++subdirectories;
      continue;
    }
    bool named_like_checkpoint = has_checkpoint_suffix(path.filename().string());
    auto kind = detect_file_kind(path);
    if (!kind.ok()) {
      out.problems.push_back(kind.error());
      continue;
    }
    if (*kind == FileKind::kOther) {
      if (named_like_checkpoint)
        out.problems.push_back(
            invalid_input(path.string() + ": neither a torch.save file nor safetensors (" +
                          std::to_string(fs::file_size(path, type_ec)) + " bytes)"));
      continue;
    }
    auto listing = list_file(path);
    if (listing.ok())
      out.listings.push_back(std::move(listing).value());
    else
      out.problems.push_back(listing.error());
  }
  // A checkpoint's files are often in subdirectories (Megatron's iter_*/mp_rank_*, verl's
  // actor/): say where to look rather than print nothing.
  if (out.listings.size() == listed_before && subdirectories > 0)
    out.notes.push_back(dir.string() + ": no torch or safetensors file directly in it (" +
                        std::to_string(subdirectories) +
                        " subdirectories: inspect their files, or `ckptstream plan --local_dir " +
                        dir.string() + "` for a checkpoint as a whole)");
}

Inspection list_paths(const std::vector<fs::path>& paths, const InterruptFlag* interrupt) {
  Inspection out;
  for (const auto& path : paths) {
    std::error_code ec;
    auto status = fs::status(path, ec);
    if (ec && ec != std::errc::no_such_file_or_directory) {
      out.problems.push_back(io_error(path.string() + ": " + ec.message()));
    } else if (!fs::exists(status)) {
      out.problems.push_back(invalid_input(path.string() + ": no such file or directory"));
    } else if (fs::is_directory(status)) {
      list_directory(path, out, interrupt);
    } else if (auto listing = list_file(path); listing.ok()) {
      out.listings.push_back(std::move(listing).value());
    } else {
      out.problems.push_back(listing.error());
    }
  }
  return out;
}

void print_json(const std::vector<Listing>& listings) {
  std::ostringstream out;
  out << "{\"files\":[";
  for (std::size_t f = 0; f < listings.size(); ++f) {
    const auto& l = listings[f];
    out << (f ? "," : "") << "\n {\"path\":" << json_quote(l.path.string())
        << ",\"format\":" << json_quote(l.format) << ",\"tensors\":[";
    for (std::size_t i = 0; i < l.rows.size(); ++i) {
      const auto& r = l.rows[i];
      out << (i ? "," : "") << "\n  {\"name\":" << json_quote(r.name)
          << ",\"dtype\":" << json_quote(torch_name(r.dtype))
          << ",\"shape\":" << shape_text(r.shape) << ",\"bytes\":" << r.bytes
          << ",\"file\":" << json_quote(l.path.string()) << ",\"offset\":" << r.offset
          << r.extra_json << "}";
    }
    out << "]}";
  }
  out << "\n]}\n";
  std::fputs(out.str().c_str(), stdout);
}

void print_text(const std::vector<Listing>& listings) {
  for (const auto& l : listings) {
    std::uint64_t total = 0;
    for (const auto& r : l.rows) total += r.bytes;
    std::printf("%s (%s): %zu tensors, %s\n", l.path.c_str(), l.format.c_str(), l.rows.size(),
                human_bytes(total).c_str());
    for (const auto& r : l.rows)
      std::printf("  %-48s %-9s %-20s %12llu B @%llu%s\n", r.name.c_str(),
                  std::string(torch_name(r.dtype)).c_str(), shape_text(r.shape).c_str(),
                  static_cast<unsigned long long>(r.bytes),
                  static_cast<unsigned long long>(r.offset), r.extra.c_str());
  }
}

}  // namespace

void add_inspect(CLI::App& app, InspectArgs& args) {
  auto* cmd = app.add_subcommand(
      "inspect", "List the tensors of torch.save / safetensors files or directories of them");
  cmd->add_option("paths", args.paths, "files or directories")->required();
  cmd->add_flag("--json", args.json, "machine-readable output");
}

int run_inspect(const InspectArgs& args) {
  Inspection found = list_paths(args.paths, args.interrupt);
  if (auto stopped = check_interrupt(args.interrupt); !stopped.ok())
    return report_error(stopped.error());
  if (args.json)
    print_json(found.listings);
  else
    print_text(found.listings);
  for (const auto& note : found.notes) std::fprintf(stderr, "note: %s\n", note.c_str());
  // Every file that could not be listed, then the worst exit code among them.
  int code = kExitOk;
  for (const auto& problem : found.problems) code = std::max(code, report_error(problem));
  return code;
}

}  // namespace ckptstream::cli
