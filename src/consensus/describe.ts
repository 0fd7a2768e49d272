/**
 * One-line descriptions of entries, messages and Readies, for logs and the scripted tests.
 * Log positions are written `term/index`.
 */
import { decodeConfChange } from './conf-change.ts';
import type { ConfState, Entry, Message, Ready, Snapshot } from './types.ts';

const decoder = new TextDecoder();

function describeData(data: Uint8Array): string {
  return data.byteLength === 0 ? '(empty)' : JSON.stringify(decoder.decode(data));
}

export function describeConfState(cs: ConfState): string {
  return `voters=(${cs.voters.join(',')}) learners=(${cs.learners.join(',')})`;
}

export function describeEntry(e: Entry): string {
  if (e.type === 'conf-change') {
    try {
      const cc = decodeConfChange(e.data);
      return `${e.term}/${e.index} conf ${cc.type} ${cc.node}`;
    } catch {
      return `${e.term}/${e.index} conf (undecodable)`;
    }
  }
  return `${e.term}/${e.index} ${describeData(e.data)}`;
}

export function describeSnapshot(s: Snapshot): string {
  return `${s.metadata.term}/${s.metadata.index} ${describeConfState(s.metadata.confState)} data=${describeData(s.data)}`;
}

export function describeMessage(m: Message): string {
  const parts = [`${m.from}->${m.to} ${m.type} term=${m.term}`];
  const context = m.context !== undefined && m.context.byteLength > 0 ? ` ctx=${describeData(m.context)}` : '';
  switch (m.type) {
    case 'app':
      parts.push(`log=${m.logTerm}/${m.index} commit=${m.commit}`);
      if (m.entries.length > 0) parts.push(`entries=[${m.entries.map(describeEntry).join(', ')}]`);
      break;
    case 'app-resp':
      parts.push(m.reject ? `rejected index=${m.index} hint=${m.logTerm}/${m.rejectHint}` : `index=${m.index}`);
      break;
    case 'vote':
    case 'pre-vote':
      parts.push(`log=${m.logTerm}/${m.index}${context}`);
      break;
    case 'vote-resp':
    case 'pre-vote-resp':
      parts.push(m.reject ? 'rejected' : 'granted');
      break;
    case 'heartbeat':
      parts.push(`commit=${m.commit}${context}`);
      break;
    case 'heartbeat-resp':
    case 'read-index':
      if (context !== '') parts.push(context.trimStart());
      break;
    case 'read-index-resp':
      parts.push(`index=${m.index}${context}`);
      break;
    case 'snap':
      if (m.snapshot !== undefined) parts.push(`snapshot=${describeSnapshot(m.snapshot)}`);
      break;
    case 'prop':
      // Proposed entries have no position yet.
      parts.push(`entries=[${m.entries.map((e) => describeEntry(e).replace(/^0\/0 /, '')).join(', ')}]`);
      break;
    case 'timeout-now':
    case 'transfer-leader':
      break;
  }
  return parts.join(' ');
}

/** A multi-line description of a Ready (no blank lines), each line prefixed with `indent`. */
export function describeReady(rd: Ready, indent = ''): string {
  const lines: string[] = [];
  if (rd.softState !== undefined) lines.push(`role=${rd.softState.role} lead=${rd.softState.leader ?? '-'}`);
  if (rd.hardState !== undefined) lines.push(`hard-state term=${rd.hardState.term} vote=${rd.hardState.vote ?? '-'} commit=${rd.hardState.commit}`);
  if (rd.snapshot !== undefined) lines.push(`snapshot ${describeSnapshot(rd.snapshot)}`);
  if (rd.entries.length > 0) lines.push('entries:', ...rd.entries.map((e) => `  ${describeEntry(e)}`));
  if (rd.committedEntries.length > 0) lines.push('committed:', ...rd.committedEntries.map((e) => `  ${describeEntry(e)}`));
  if (rd.readStates.length > 0) lines.push('read-states:', ...rd.readStates.map((rs) => `  index=${rs.index} ctx=${describeData(rs.context)}`));
  if (rd.messages.length > 0) lines.push('messages:', ...rd.messages.map((m) => `  ${describeMessage(m)}`));
  return lines.map((l) => indent + l).join('\n');
}
