"""Test double of Huawei's npu_bridge (TF 1.15 Ascend adapter); see ../README.md."""
