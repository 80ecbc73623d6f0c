"""The training stages, one LightningModule each (depth 1, no shared base class)."""

from yonos.modules.codec import CodecModule
from yonos.modules.decoder import DecoderFinetuneModule
from yonos.modules.distill import ScaleDistillModule
from yonos.modules.prior import PriorModule
from yonos.modules.teacher import TeacherModule

__all__ = ["CodecModule", "DecoderFinetuneModule", "PriorModule", "ScaleDistillModule", "TeacherModule"]
