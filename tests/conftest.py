import pytest
from jobs import synthetic_spec


@pytest.fixture(scope="session")
def fp_model(tmp_path_factory) -> str:
    """A full-precision model.pt trained for 3 epochs: the start of quantized runs."""
    from lsq.train import run

    out = tmp_path_factory.mktemp("fp")
    run(synthetic_spec(epochs=3), out)
    return str(out / "model.pt")
