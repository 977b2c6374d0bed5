"""Pretraining: run YAML -> fleet hybrid-parallel loop (dp / mp / pp / sharding / recompute).

    run_config  YAML -> RunConfig dataclasses (model preset, data, optim, amp, parallel, train, checkpoint, logging)
    optim       AdamW with no decay on layernorm/bias, warmup + cosine schedule, grad-norm recorder
    amp         which mixed-precision mode the device allows
    batches     the data order: a pure function of (seed, step, data rank); synthetic tokens
    checkpoint  per-rank save / resume (model, optimizer, scheduler, scaler, RNGs, data position)
    logging     console line, tqdm bar, VisualDL scalars
    trainer     the loop, evaluation, consolidated `final_model/`
    evaluate    perplexity of a consolidated model directory in one process
    cli         `pangu train`
"""
