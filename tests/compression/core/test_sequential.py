import torch

from presso.compression.core.context import StepContext
from presso.compression.core.layout import find_layout
from presso.compression.core.sequential import capture_inputs, forward_block, run_blockwise


def test_blockwise_outputs_match_full_forward(tiny_llama, calib_ids):
    """Feeding each block the previous block's outputs reproduces the model's hidden states."""
    layout = find_layout(tiny_llama)
    ctx = StepContext(calibration=calib_ids, batch_size=4)
    inputs = capture_inputs(tiny_llama, layout, ctx)
    with torch.no_grad():
        ref = tiny_llama(input_ids=calib_ids[:4], output_hidden_states=True).hidden_states
    assert torch.allclose(inputs.hidden[0], ref[0], atol=1e-5)
    h1 = forward_block(layout.blocks[0], inputs)
    assert torch.allclose(h1[0], ref[1], atol=1e-4)


def test_run_blockwise_visits_each_block_in_order(tiny_llama, calib_ids):
    seen = []
    fractions = []
    ctx = StepContext(calibration=calib_ids, batch_size=4, progress=lambda s, f: fractions.append(f))
    run_blockwise(tiny_llama, find_layout(tiny_llama), ctx, lambda i, b, x: seen.append((i, len(x.hidden))))
    assert seen == [(0, 2), (1, 2)]
    assert fractions[-1] == 1.0
