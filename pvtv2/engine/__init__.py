"""What every task's training shares: config files, run set-up (processes, device, seeds, banner), the
optimizer step (AMP, grad scaler, clipping, accumulation), the training loop, lr schedules, training
checkpoints (atomic save, exact resume), metrics and curves, the C allocator's setting, text tables.

It knows no task: classification, detection and segmentation stand on it (``pvtv2.<task>.train``).
"""
