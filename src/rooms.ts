/**
 * Room details for bot authors: everything the cache knows about a room, with the power-level questions
 * (`powerLevel`, `can`) answered by the spec's rules in src/power.ts. Pure: no I/O, built from a cache answer.
 */
import { type Action, can, powerLevel, type PowerContext } from './power.ts';
import type { RoomInfo } from './protocol.ts';

/** A member of a room as the cache knows it. */
export interface RoomMember {
  userId: string;
  displayName: string | null;
  avatarUrl: string | null;
  /** join, invite, leave, ban or knock. */
  membership: string;
}

/**
 * A snapshot of a room from the cache actor (name, topic, members, power levels, ...), with permission checks.
 * Members are lazy-loaded by sync: those who spoke or changed since the bot joined, plus any loaded with
 * `client.loadMembers(roomId)`.
 */
export class RoomDetails implements RoomInfo {
  readonly roomId: string;
  /**
   * The room's name, topic, canonical alias and avatar. While the bot is only invited (or has knocked), these are
   * what the invite's stripped state claims: unverified, sent by the inviting server. Everything else is then
   * empty (no creators, power levels or members) and {@link can} answers false.
   */
  readonly name: string | null;
  /** See {@link name}: unverified while invited or knocking. */
  readonly topic: string | null;
  /** See {@link name}: unverified while invited or knocking. */
  readonly canonicalAlias: string | null;
  /** See {@link name}: unverified while invited or knocking. */
  readonly avatarUrl: string | null;
  readonly encrypted: boolean;
  readonly joinedMemberCount: number;
  readonly invitedMemberCount: number;
  readonly membership: RoomInfo['membership'];
  /** The first of {@link creators}, or null before the create event is known. */
  readonly creator: string | null;
  /**
   * The room's creators by src/power.ts's rule: `m.room.create`'s `content.creator` before room version 11, its
   * sender from 11 on, plus `additional_creators` from 12.
   */
  readonly creators: string[];
  readonly roomVersion: string | null;
  readonly historyVisibility: string | null;
  readonly joinRule: string | null;
  readonly powerLevels: Record<string, unknown> | null;
  readonly members: RoomMember[];

  /** @internal */
  constructor(info: RoomInfo) {
    this.roomId = info.roomId;
    this.name = info.name;
    this.topic = info.topic;
    this.canonicalAlias = info.canonicalAlias;
    this.avatarUrl = info.avatarUrl;
    this.encrypted = info.encrypted;
    this.joinedMemberCount = info.joinedMemberCount;
    this.invitedMemberCount = info.invitedMemberCount;
    this.membership = info.membership;
    this.creator = info.creator;
    this.creators = info.creators;
    this.roomVersion = info.roomVersion;
    this.historyVisibility = info.historyVisibility;
    this.joinRule = info.joinRule;
    this.powerLevels = info.powerLevels;
    this.members = info.members;
  }

  private get ctx(): PowerContext {
    return { powerLevels: this.powerLevels, creators: this.creators, roomVersion: this.roomVersion };
  }

  /** The user's power level (`Infinity` for the creators of rooms whose version makes creators privileged). */
  powerLevel(userId: string): number {
    return powerLevel(this.ctx, userId);
  }

  /**
   * Whether the user may do `action` under the room's power levels (the spec's rules and defaults). Power levels
   * only: membership (a user must be joined to act) is not checked. False for everything while the bot is invited
   * or knocking: the room's state is not known then, only claimed.
   */
  can(userId: string, action: Action | Action['kind']): boolean {
    if (this.membership === 'invite' || this.membership === 'knock') return false;
    const a = typeof action === 'string' ? defaultAction(action) : action;
    return can(this.ctx, userId, a);
  }

  /** The member entry of `userId`, if the cache knows it. */
  member(userId: string): RoomMember | undefined {
    return this.members.find((m) => m.userId === userId);
  }

  /** Members with the given membership (default `join`). */
  membersWith(membership = 'join'): RoomMember[] {
    return this.members.filter((m) => m.membership === membership);
  }
}

/** `can(user, 'send')` and friends: the common question for each kind, without a target. */
function defaultAction(kind: Action['kind']): Action {
  switch (kind) {
    case 'send':
      return { kind, eventType: 'm.room.message' };
    case 'state':
      return { kind, eventType: 'm.room.name' };
    case 'kick':
    case 'ban':
    case 'unban':
      return { kind, target: '' } as Action;
    default:
      return { kind } as Action;
  }
}
