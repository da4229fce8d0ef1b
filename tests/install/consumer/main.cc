// consumer CHECKPOINT_DIR TARGET_DIR: plans the merge of a training checkpoint, writes it and
// verifies it, through the public API only; prints what the plan and the check said.
#include <ckptstream/ckptstream.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  auto plan = ckptstream::plan_checkpoint(argv[1], {});
  if (!plan.ok()) {
    std::fprintf(stderr, "plan: %s\n", plan.error().message.c_str());
    return 1;
  }
  std::printf("found: %s\n", plan->layout().c_str());
  std::printf("plan: %zu tensors in %zu file(s)\n", plan->tensor_count(), plan->file_count());
  ckptstream::WriteOptions write;
  write.ignore_environment = true;
  auto written = ckptstream::write_model(*plan, argv[2], write);
  if (!written.ok() || !*written) {
    std::fprintf(stderr, "write: %s\n",
                 written.ok() ? "incomplete" : written.error().message.c_str());
    return 1;
  }
  auto report = ckptstream::verify_output(argv[2], {});
  if (!report.ok() || !report->ok()) {
    std::fprintf(stderr, "verify failed\n");
    return 1;
  }
  std::printf("verified: %zu tensors\n", report->tensors);
  return 0;
}
