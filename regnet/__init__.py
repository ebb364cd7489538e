"""RegNet models in plain PyTorch, exactly as pycls defines them.

    from regnet import regnetx_002, Xblock, Yblock
    model = regnetx_002(block=Yblock, num_classes=10)
"""

from .blocks import SE, AnyHead, BottleneckTransform, SimpleStem, Xblock, Yblock
from .model import AnyNet, RegNet, RegNetBackbone, complexity, complexity_of_stages
from .widths import RegNetParams, StageSpec, adjust_block_compatibility, quantized_linear_widths, stage_specs
from .zoo import ZOO, config_of, create_model, list_models
from .zoo import (  # noqa: F401  the 24 zoo constructors
    regnetx_002, regnetx_004, regnetx_006, regnetx_008, regnetx_016, regnetx_032,
    regnetx_040, regnetx_064, regnetx_080, regnetx_120, regnetx_160, regnetx_320,
    regnety_002, regnety_004, regnety_006, regnety_008, regnety_016, regnety_032,
    regnety_040, regnety_064, regnety_080, regnety_120, regnety_160, regnety_320,
)

__version__ = "0.1.0"

# The paper's toolkit: design spaces, analysis, training and sweeps.
from .analysis import bootstrap_good_range, edf, fit_widths, plot_edfs  # noqa: E402
from .design_space import SPACES, AnyNetSpec, Regime, get_space  # noqa: E402
from .sweep import load_results, plot_sweeps, run_sweep  # noqa: E402
from .train import Trainer, TrainingConfig, synthetic_datasets  # noqa: E402
