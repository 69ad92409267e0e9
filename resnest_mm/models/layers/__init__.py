from .split_attention import SplitAttentionConv2d

__all__ = ['SplitAttentionConv2d']
