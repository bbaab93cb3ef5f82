"""The reduced PIPs (latent 32, mixer 64x1, stride 8) train step compiled for a Cloud TPU v5e 2x2
needs only the gradient all-reduce; a file of its own so that pytest-xdist runs it beside RAFT's."""
from test_compile_report import check_tpu_train_step


def test_tpu_train_step_of_the_reduced_pips_needs_only_the_gradient_all_reduce():
    check_tpu_train_step("pips")
