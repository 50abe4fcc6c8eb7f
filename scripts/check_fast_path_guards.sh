#!/bin/bash
# Each guard of tests/test_fast_paths.py must fail when its fast path is lost: break each path in turn
# (an edit of the working tree), run its guard, restore the file with git. Every "==" line should be
# followed by "N failed"; the last line, with everything restored, by all passed.
#   bash scripts/check_fast_path_guards.sh   (about a minute; needs a clean tiwbench/ tree)
set -u
cd "$(dirname "$0")/.."
git diff --quiet -- tiwbench || { echo "tiwbench/ has uncommitted changes: commit or stash them first"; exit 2; }
run() { ${PY:-.venv/bin/python} -m pytest -q --tb=no -rN -p no:cacheprovider tests/test_fast_paths.py -k "$1" 2>&1 | tail -1; }
restore() { git checkout -q -- tiwbench; }
echo "== a) attention written out by hand"
python3 - <<'EOF'
import pathlib; p=pathlib.Path("tiwbench/diffusion/unet.py"); s=p.read_text()
s=s.replace("out = F.scaled_dot_product_attention(q, k, v)", "out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v")
p.write_text(s)
EOF
run scaled_dot_product; restore
echo "== b1) ratio network not compiled"
sed -i 's/^        ratio.net.compile()$/        pass/' tiwbench/training/loop.py
run train_compile; restore
echo "== b2) score network not compiled"
sed -i 's/^    net.compile()$/    pass/' tiwbench/training/loop.py
run train_compile; restore
echo "== c) ratio model on the D_bias subset"
python3 - <<'EOF'
import pathlib; p=pathlib.Path("tiwbench/training/methods.py"); s=p.read_text()
old='''    xin = batch.x if inputs == "x" else batch.y
    count = ~batch.is_ref  # the clip rate counts D_bias samples only
    if grad:'''
new='''    xin = batch.x if inputs == "x" else batch.y
    count = ~batch.is_ref  # the clip rate counts D_bias samples only
    idx = batch.bias_idx
    if grad:
        lw, g = ratio.log_ratio_and_grad(xin[idx], batch.sigma[idx])
        full_w = torch.zeros_like(batch.sigma).index_put((idx,), lw)
        full_g = torch.zeros_like(xin).index_put((idx,), g)
        return full_w, full_g
    if True:
        return torch.zeros_like(batch.sigma).index_put((idx,), ratio.log_ratio(xin[idx], batch.sigma[idx]))
    if grad:'''
assert old in s; p.write_text(s.replace(old,new))
EOF
run one_shape; restore
echo "== d) group norm in float32 under autocast (casts back and forth)"
python3 - <<'EOF'
import pathlib; p=pathlib.Path("tiwbench/diffusion/unet.py"); s=p.read_text()
old="        if x.dtype in (torch.bfloat16, torch.float16):"
assert old in s; p.write_text(s.replace(old,"        if False:"))
EOF
run copies_no_feature_map; restore
echo "== d2) torch's group norm (layout conversion) under autocast"
python3 - <<'EOF'
import pathlib; p=pathlib.Path("tiwbench/diffusion/unet.py"); s=p.read_text()
old="        if x.ndim != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):"
assert old in s; p.write_text(s.replace(old,"        if True:"))
EOF
run copies_no_feature_map; restore
echo "== e) one-pass bf16 group norm"
python3 - <<'EOF'
import pathlib; p=pathlib.Path("tiwbench/diffusion/unet.py"); s=p.read_text()
old="        var, rest = torch.var_mean(d, dim=dims, keepdim=True, correction=0)"
assert old in s
s=s.replace(old, "        var, rest = torch.var_mean(v, dim=dims, keepdim=True, correction=0)\n        rest = rest * 0")
s=s.replace("        d = v - v.mean(dim=dims, keepdim=True)","        d = v - torch.var_mean(v, dim=dims, keepdim=True, correction=0)[1]")
p.write_text(s)
EOF
run group_norm_bf16; restore
echo "== f) CPU attention formula removed"
python3 - <<'EOF'
import pathlib; p=pathlib.Path("tiwbench/sweep/step_bench.py"); s=p.read_text()
old="    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)"
assert old in s; p.write_text(s.replace(old,"    return FlopCounterMode(display=False)"))
EOF
run fused_attention_flops; restore
echo "== restored:"; git status --short tiwbench; run "" 
