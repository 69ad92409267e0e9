"""The data set modules whose toolbox is installed, imported: where mmengine's registries look
for ``resnest_mm.`` data sets and transforms that no ``custom_imports`` registered."""
import importlib.util

if importlib.util.find_spec('mmdet') is not None:
    from . import coco  # noqa: F401
if importlib.util.find_spec('mmseg') is not None:
    from . import ade  # noqa: F401
