/** The devices module: the accelerator model, discovery from vendor tools, and simulated hosts. */
export * from './model.ts';
export { normalizePciBusId } from './probe/parse-util.ts';
export * from './probe/nvidia-common.ts';
export * from './probe/nvidia-xml.ts';
export * from './probe/nvidia-text.ts';
export * from './probe/nvidia-csv.ts';
export * from './probe/nvidia-topo.ts';
export * from './probe/rocm.ts';
export * from './probe/host.ts';
export * from './probe/discover.ts';
export * from './fake/captures.ts';
export * from './fake/profiles.ts';
export * from './fake/fake-tool.ts';
