// main() of the test programs that use libtorch: one compute thread, as every worker has.
#include <gtest/gtest.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  at::set_num_threads(1);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
