/**
 * Placement: the pure scheduler (spec → request; snapshot → cluster state; filters → scores →
 * devices → plan), the leader's plan check, and the replicated state machine (./fsm).
 *
 * What the daemon calls, in order:
 *
 *   const request = requestFromSpec(specJson, jobId);            // BAD_INPUT names every bad field
 *   const snapshot = snapshotOf({ peers: states.map((s) => peerViewOf(s)), jobs, allocations, tenants, now });
 *   const cluster = ClusterState.fromSnapshot(snapshot);
 *   // Long-lived (it keeps per-peer score caches). The mix: shapes of recent jobs, e.g.
 *   // workloadMixOf(recent.map((r) => ({ member: r.member, device: r.device })), { coverage: 1, byMemory: true }).
 *   // Leave out `rng` for the best packing: ties then go to the first peer in snapshot order.
 *   const scheduler = new Scheduler({ mix });
 *   checkFeasibleEver(cluster, request, scheduler);               // at submit: refuse the impossible
 *   const result = scheduler.schedule(cluster, request);          // or scheduleQueue(cluster, pending, scheduler)
 *   verifyPlan(committedCluster, result.plan!, request);          // leader, right before proposing
 *   toReleaseCommands(plan, …); toAllocPlaceCommand(plan, …);     // what goes to Raft
 *   formatExplanation(result.explain, result.status.code);        // fabric explain
 */
export * from './spec.ts';
export * from './quantity.ts';
export * from './selector.ts';
export * from './sizing.ts';
export * from './snapshot.ts';
export * from './cluster.ts';
export * from './plan.ts';
export * from './verify.ts';
export * from './explain.ts';
export { Scheduler, SCORE_PLUGINS, DEFAULT_WEIGHTS, describeGrant, type Explanation, type PeerScore, type RemovedCount, type ScheduleResult, type SchedulerOptions, type CycleOptions, type Shape, type ScorePluginName } from './scheduler/schedule.ts';
export { scheduleQueue, dominantShare, reservationFor, DEFAULT_RESERVE_AFTER_MS, type PendingJob, type QueueOptions, type QueueOutcome } from './scheduler/queue.ts';
export { checkFeasibleEver, type Feasibility } from './scheduler/feasibility.ts';
export { makePolicy, workloadMixOf, POLICY_NAMES, type PackingPolicy, type PolicyName, type WorkloadMix, type WorkloadClass, type WorkloadSample } from './scheduler/packing.ts';
export { EligibilityCache, type DeviceNeed } from './scheduler/eligibility.ts';
