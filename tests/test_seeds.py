"""yonos.seeds: the training stream's position survives a save taken before the first draw after a resume, and
the derived seeds depend on their positions only."""

import torch

from yonos.seeds import TrainingStream, crop_generator, validation_generator, validation_seed

CPU = torch.device("cpu")


def test_a_save_before_the_first_draw_after_a_resume_keeps_the_position() -> None:
    stream = TrainingStream(5)
    torch.rand(3, generator=stream.generator(CPU, rank=0))
    position = stream.state()
    expected = torch.rand(4, generator=stream.generator(CPU, rank=0))

    resumed = TrainingStream(5)
    resumed.restore(position)
    saved_again = {}
    resumed.save(saved_again)  # e.g. a checkpoint written before the resumed run drew anything
    again = TrainingStream(5)
    again.load(saved_again)

    assert torch.equal(torch.rand(4, generator=again.generator(CPU, rank=0)), expected)


def test_ranks_draw_different_streams_and_a_fresh_stream_saves_nothing() -> None:
    a, b = TrainingStream(5), TrainingStream(5)
    checkpoint: dict = {}
    a.save(checkpoint)
    assert checkpoint == {}
    assert not torch.equal(torch.rand(4, generator=a.generator(CPU, 0)), torch.rand(4, generator=b.generator(CPU, 1)))


def test_validation_and_crop_seeds_are_functions_of_their_positions() -> None:
    assert validation_seed(2, 7) != validation_seed(2, 8) != validation_seed(3, 7)
    same = [torch.rand(2, generator=validation_generator(2, 7)) for _ in range(2)]
    assert torch.equal(*same)
    assert torch.equal(torch.rand(2, generator=crop_generator(1, 0, 4)), torch.rand(2, generator=crop_generator(1, 0, 4)))
    assert not torch.equal(torch.rand(2, generator=crop_generator(1, 0, 4)), torch.rand(2, generator=crop_generator(1, 1, 4)))
