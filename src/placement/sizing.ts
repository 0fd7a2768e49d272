/**
 * Model-aware sizing: from a few hints about a transformer model (parameters, dtype, inference or
 * fine-tuning, context length, batch) to a GPU memory estimate and the number of GPUs of a given
 * size that hold it. Estimates are deliberately simple and documented term by term, so that
 * `fabric explain` can show where a number came from.
 *
 * Terms and sources:
 * - Weights: parameters × bytes per parameter of the dtype (fp32 4, bf16/fp16 2, fp8/int8 1,
 *   int4 0.5).
 * - Architecture, when the spec does not give it: the non-embedding parameter count of a
 *   decoder-only transformer is N ≈ 12·L·h² (Kaplan et al. 2020, "Scaling Laws for Neural Language
 *   Models", §2.1), and common models keep h ≈ 128·L (Llama-2 7B: h=4096, L=32; 13B: 5120, 40), so
 *   h = ∛(128·N/12) and L = h/128. Attention is assumed multi-head (one K/V head per query head)
 *   unless `kvHeads` and `heads` say otherwise, which overestimates the KV cache of
 *   grouped-query models: safe for placement.
 * - KV cache (inference): 2 (K and V) × L × h·kvHeads/heads × context × batch × bytes of the KV
 *   dtype (Pope et al. 2022, "Efficiently Scaling Transformer Inference", §3.1; the same formula
 *   sizes vLLM's cache blocks).
 * - Full fine-tuning / training with Adam in mixed precision: 16 bytes per parameter — 2 for the
 *   16-bit weights, 2 for their gradients, 12 for the fp32 master copy, momentum and variance
 *   (Rajbhandari et al. 2020, "ZeRO", §3.1: "16Ψ bytes"). fp32 training holds the same 16
 *   (4 weights + 4 gradients + 8 Adam moments).
 * - LoRA (Hu et al. 2021): frozen base weights in their dtype (int4 for QLoRA) plus, for rank r on
 *   the four attention projections of every layer, 4·L·2·r·h trainable parameters at 16 bytes each
 *   (they train like full parameters).
 * - Training activations: with 16-bit activations one layer keeps s·b·h·34 bytes for the backward
 *   pass (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
 *   Models", eq. 1, without the 5·a·s/h attention-score term that FlashAttention does not store).
 *   With activation checkpointing (the default here, as most fine-tuning recipes enable it) only
 *   each layer's 2·s·b·h input is kept, plus one layer's full set while it is recomputed.
 * - Inference activations: the peak of one layer's MLP during prefill, 4·h wide:
 *   b·s·4h × the dtype's bytes.
 * - Runtime overhead: 1 GiB per GPU for the CUDA/ROCm context and framework workspace.
 *
 * Splitting over N GPUs: inference shards weights, KV cache and activations with tensor
 * parallelism; training shards weights, gradients and optimizer states (ZeRO-3 / FSDP) while each
 * GPU keeps the activations of its own micro-batch. N is a power of two (tensor-parallel degrees
 * must divide the head count; FSDP recipes use powers of two).
 */

export const DTYPES = ['fp32', 'tf32', 'bf16', 'fp16', 'fp8', 'int8', 'int4'] as const;
export type Dtype = (typeof DTYPES)[number];
export const MODES = ['inference', 'lora', 'full'] as const;
export type SizingMode = (typeof MODES)[number];

export interface ModelHints {
  /** Parameter count. */
  params: number;
  dtype: Dtype;
  mode: SizingMode;
  /** Tokens per sequence; default 4096 for inference, 2048 for training. */
  contextLength?: number;
  /** Sequences per GPU step (inference: concurrent sequences); default 1. */
  batch?: number;
  layers?: number;
  hiddenSize?: number;
  heads?: number;
  kvHeads?: number;
  /** LoRA rank; default 16. */
  loraRank?: number;
  /** Training: keep only layer inputs and recompute the rest in the backward pass; default true. */
  activationCheckpointing?: boolean;
}

export interface MemoryEstimate {
  /** Bytes that split across GPUs. */
  weights: number;
  kvCache: number;
  gradients: number;
  optimizer: number;
  /** Bytes every GPU holds in full (training activations) or that split (inference activations). */
  activations: number;
  /** Per GPU. */
  overheadPerGpu: number;
  /** Whether activations split with the model (tensor parallel inference) or stay per GPU. */
  activationsShard: boolean;
  /** The architecture the estimate assumed. */
  layers: number;
  hiddenSize: number;
  /** Total for one GPU holding everything. */
  totalBytes: number;
}

const GIB = 1024 ** 3;
const MIB = 1024 ** 2;
export const RUNTIME_OVERHEAD_BYTES = GIB;
/** GPU counts tried when splitting a model: tensor-parallel / FSDP degrees. */
export const SPLIT_DEGREES = [1, 2, 4, 8, 16, 32, 64, 128, 256] as const;

export function bytesPerParam(dtype: Dtype): number {
  switch (dtype) {
    case 'fp32':
    case 'tf32':
      return 4;
    case 'bf16':
    case 'fp16':
      return 2;
    case 'fp8':
    case 'int8':
      return 1;
    case 'int4':
      return 0.5;
  }
}

/** Layers and hidden size: the spec's, or the N ≈ 12·L·h², h ≈ 128·L estimate. */
export function architectureOf(hints: ModelHints): { layers: number; hiddenSize: number } {
  const estimatedHidden = Math.cbrt((128 * hints.params) / 12);
  const hiddenSize = hints.hiddenSize ?? Math.max(64, Math.round(estimatedHidden));
  const layers = hints.layers ?? Math.max(1, Math.round((hints.hiddenSize ?? estimatedHidden) / 128));
  return { layers, hiddenSize };
}

export function estimateMemory(hints: ModelHints): MemoryEstimate {
  const { layers, hiddenSize } = architectureOf(hints);
  const training = hints.mode !== 'inference';
  const context = hints.contextLength ?? (training ? 2048 : 4096);
  const batch = hints.batch ?? 1;
  const bytes = bytesPerParam(hints.dtype);
  // Activations and KV are 16-bit unless the whole model runs in fp32.
  const activationBytes = bytes >= 4 ? 4 : 2;
  const tokens = context * batch;

  let weights = hints.params * bytes;
  let gradients = 0;
  let optimizer = 0;
  let kvCache = 0;
  let activations: number;

  if (hints.mode === 'inference') {
    const kvDim = hints.kvHeads !== undefined && hints.heads !== undefined ? (hiddenSize * hints.kvHeads) / hints.heads : hiddenSize;
    kvCache = 2 * layers * kvDim * tokens * activationBytes;
    activations = tokens * 4 * hiddenSize * activationBytes;
  } else {
    const perLayerFull = 34 * tokens * hiddenSize * (activationBytes / 2);
    const checkpointing = hints.activationCheckpointing ?? true;
    activations = checkpointing ? layers * 2 * tokens * hiddenSize * (activationBytes / 2) + perLayerFull : layers * perLayerFull;
    if (hints.mode === 'full') {
      // Mixed precision (or fp32): 16 bytes per parameter in all.
      weights = hints.params * Math.max(2, Math.min(bytes, 4));
      gradients = weights;
      optimizer = hints.params * 16 - weights - gradients;
    } else {
      const rank = hints.loraRank ?? 16;
      const trainable = 4 * layers * 2 * rank * hiddenSize;
      weights += trainable * 2;
      gradients = trainable * 2;
      optimizer = trainable * 12;
    }
  }
  const overheadPerGpu = RUNTIME_OVERHEAD_BYTES;
  const totalBytes = weights + kvCache + gradients + optimizer + activations + overheadPerGpu;
  return { weights, kvCache, gradients, optimizer, activations, overheadPerGpu, activationsShard: !training, layers, hiddenSize, totalBytes };
}

/** Bytes one GPU holds when the model is split over `gpus` GPUs. */
export function bytesPerGpu(estimate: MemoryEstimate, gpus: number): number {
  const sharded = estimate.weights + estimate.kvCache + estimate.gradients + estimate.optimizer;
  const activations = estimate.activationsShard ? estimate.activations / gpus : estimate.activations;
  return sharded / gpus + activations + estimate.overheadPerGpu;
}

/**
 * The fewest GPUs of `gpuMemoryMiB` each (a power of two up to `maxGpus`) that hold the model,
 * or null when even `maxGpus` are not enough.
 */
export function gpusToFit(estimate: MemoryEstimate, gpuMemoryMiB: number, maxGpus = 256): number | null {
  const capacity = gpuMemoryMiB * MIB;
  for (const n of SPLIT_DEGREES) {
    if (n > maxGpus) break;
    if (bytesPerGpu(estimate, n) <= capacity) return n;
  }
  return null;
}

/** Whole MiB one GPU needs when the model is split over `gpus` GPUs. */
export function mibPerGpu(estimate: MemoryEstimate, gpus: number): number {
  return Math.ceil(bytesPerGpu(estimate, gpus) / MIB);
}

/** A one-line account of an estimate for `fabric explain`. */
export function describeEstimate(estimate: MemoryEstimate): string {
  const gib = (b: number): string => `${(b / GIB).toFixed(1)} GiB`;
  const parts = [`weights ${gib(estimate.weights)}`];
  if (estimate.kvCache > 0) parts.push(`KV cache ${gib(estimate.kvCache)}`);
  if (estimate.gradients > 0) parts.push(`gradients ${gib(estimate.gradients)}`);
  if (estimate.optimizer > 0) parts.push(`optimizer ${gib(estimate.optimizer)}`);
  parts.push(`activations ${gib(estimate.activations)}`, `runtime ${gib(estimate.overheadPerGpu)}/GPU`);
  return `${gib(estimate.totalBytes)} (${parts.join(', ')}; assumed ${estimate.layers} layers, hidden ${estimate.hiddenSize})`;
}
