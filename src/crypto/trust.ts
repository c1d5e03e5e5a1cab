/**
 * The `trust` option in the crypto actor: which devices room keys are shared with, which senders' events are
 * accepted, and the trust level each decrypted event carries to main (its sender device's state).
 *
 * The levels come from the sender device as the store knows it (verified by the bot, cross-signed by its owner,
 * or neither), and from the engine's shield for what only the session tells (a changed identity, a key not tied
 * to a device). The bot's own device counts as verified.
 */
import { TRUST_LEVELS, type TrustLevel, type TrustPolicy } from '../protocol.ts';
import { free } from '../memory.ts';

/**
 * The crypto binding, handed in by the crypto actor: actor.ts stays the one module that loads it (these are types
 * only, erased at build).
 */
export type Wasm = typeof import('@matrix-org/matrix-sdk-crypto-wasm');
type OlmMachine = import('@matrix-org/matrix-sdk-crypto-wasm').OlmMachine;
type DecryptedRoomEvent = import('@matrix-org/matrix-sdk-crypto-wasm').DecryptedRoomEvent;
type CollectStrategy = import('@matrix-org/matrix-sdk-crypto-wasm').CollectStrategy;
type DecryptionSettings = import('@matrix-org/matrix-sdk-crypto-wasm').DecryptionSettings;

/** What decryption found about an event's sender device. */
export interface SenderTrust {
  level: TrustLevel;
  /** The sender's device ID, when the engine knows it. */
  deviceId: string | null;
}

/** A decryption refused by the `trust` option: why, in words for the `decryptionError` message. */
export interface TrustRefusal {
  refused: string;
  /**
   * The sender's device or identity may not be known yet (a user the bot does not track: the room key came with the
   * device's keys, not its owner's cross-signing identity); a retry after a key query of the sender may succeed.
   */
  unknownDevice: boolean;
}

/** The trust rules of one crypto actor; see the module comment. */
export class TrustRules {
  /** Each sender device's level (null: unknown device), kept for one decrypt request (devices change rarely). */
  private levels = new Map<string, TrustLevel | null>();
  private warnedUnsigned = false;
  /** The engine's refusals under a trust requirement, by decryption error code. */
  private readonly engineRefusals: ReadonlyMap<number, string>;

  constructor(
    private readonly W: Wasm,
    readonly policy: TrustPolicy,
    /** The bot's own user and device. */
    private readonly own: { userId: string; deviceId: string },
    private readonly warn: (message: string) => void,
  ) {
    this.engineRefusals = new Map([
      [W.DecryptionErrorCode.UnsignedSenderDevice, 'its sender device is not cross-signed by its owner'],
      [W.DecryptionErrorCode.UnknownSenderDevice, 'its sender device is not known'],
      [W.DecryptionErrorCode.SenderIdentityVerificationViolation, 'its sender was verified before and has a new identity since'],
    ]);
  }

  /**
   * Decryption settings (a new object per call: wasm-bindgen moves arguments passed by value). `signed` is the
   * engine's MSC4153 rule (cross-signed devices, and sessions from before the engine tracked senders); `verified`
   * is checked after decryption (a device the bot verified need not be cross-signed), so the engine accepts all.
   */
  private decryptionSettings(): DecryptionSettings {
    const W = this.W;
    return new W.DecryptionSettings(this.policy === 'signed' ? W.TrustRequirement.CrossSignedOrLegacy : W.TrustRequirement.Untrusted);
  }

  /**
   * Decrypts a room event under the option's rule. The bot's own device passes whatever its cross-signing: its
   * events come back in the sync, and until the device is cross-signed `signed` would refuse them. So an event of
   * the bot's user that the rule refuses is decrypted again accepting any device, and kept only if the engine says
   * the bot's device encrypted it (another device of the bot's user stays under the rule).
   */
  async decrypt(machine: OlmMachine, raw: string, roomId: string, sender: unknown): Promise<DecryptedRoomEvent> {
    const W = this.W;
    // Borrowed by decryptRoomEvent, not moved: freed here (see free() in src/memory.ts).
    const room = new W.RoomId(roomId);
    const settings = this.decryptionSettings();
    const any = new W.DecryptionSettings(W.TrustRequirement.Untrusted);
    try {
      return await machine.decryptRoomEvent(raw, room, settings);
    } catch (err) {
      if (sender !== this.own.userId || this.engineRefusal(err) === null) throw err;
      const d = await machine.decryptRoomEvent(raw, room, any);
      if (this.isOwnDevice(idText(d.sender)!, idText(d.senderDevice))) return d;
      d.free();
      throw err;
    } finally {
      free(room, settings, any);
    }
  }

  /**
   * Who room keys go to. `signed` is the engine's identity-based strategy, which refuses to share at all while the
   * bot's own device is not cross-signed (its own identity missing or not trusted): then keys go to every device,
   * as with `all`, and a warning says so once per run, rather than leaving the bot unable to send.
   */
  async sharingStrategy(machine: OlmMachine): Promise<CollectStrategy> {
    const W = this.W;
    if (this.policy === 'all') return W.CollectStrategy.allDevices();
    if (this.policy === 'verified') return W.CollectStrategy.onlyTrustedDevices();
    const user = new W.UserId(this.own.userId);
    const own = await machine.getIdentity(user).finally(() => user.free());
    const ready = own instanceof W.OwnUserIdentity && own.isVerified();
    own?.free();
    if (ready) return W.CollectStrategy.identityBasedStrategy();
    if (!this.warnedUnsigned) {
      this.warnedUnsigned = true;
      this.warn(
        "trust 'signed': the bot's own device is not cross-signed, so room keys are shared with every device of the room's members " +
          '(unsigned ones included) until it is; log in with Client.login to cross-sign it',
      );
    }
    return W.CollectStrategy.allDevices();
  }

  /** Starts a decrypt request: device trust is read afresh (a verification or key query may have changed it). */
  beginRequest(): void {
    this.levels.clear();
  }

  /** Forgets what is known of devices (a verification ended). */
  forget(): void {
    this.levels.clear();
  }

  /**
   * The trust of a decrypted event's sender device. The shield tells a changed identity and a key not tied to a
   * device (forwarded, or from a backup); the rest comes from the device as the store knows it now (the strict
   * shield says "unverified user" for a device the store does not know, so it cannot tell signed from unsigned).
   * `known: false`: the store does not know the device (its owner is not tracked); a key query may tell.
   */
  async senderTrust(machine: OlmMachine, d: DecryptedRoomEvent): Promise<SenderTrust & { known: boolean }> {
    const W = this.W;
    const shield = d.shieldState(true);
    const code = shield.code;
    shield.free();
    const deviceId = idText(d.senderDevice);
    const userId = idText(d.sender)!;
    // The bot's own device is the bot: verified by definition (unsigned until it is cross-signed).
    if (this.isOwnDevice(userId, deviceId)) return { level: 'verified', deviceId, known: true };
    if (code === W.ShieldStateCode.VerificationViolation) return { level: 'identity-changed', deviceId, known: true };
    if (code === W.ShieldStateCode.AuthenticityNotGuaranteed) return { level: 'unknown-device', deviceId, known: true };
    const level = deviceId === null ? null : await this.deviceLevel(machine, userId, deviceId);
    return { level: level ?? 'unknown-device', deviceId, known: level !== null };
  }

  /**
   * `identity-changed` when the sender's owner was verified by the bot and has a new identity since. The shield does
   * not say so for a device the bot verified itself (SAS marks the device verified locally, which a new identity
   * does not undo): the identity tells.
   */
  private async identityChanged(machine: OlmMachine, userId: string): Promise<boolean> {
    const user = new this.W.UserId(userId);
    const identity = await machine.getIdentity(user).finally(() => user.free());
    const changed = identity?.hasVerificationViolation() ?? false;
    identity?.free();
    return changed;
  }

  private isOwnDevice(userId: string, deviceId: string | null): boolean {
    return userId === this.own.userId && deviceId === this.own.deviceId;
  }

  /**
   * Why the `trust` option refuses an event whose sender has this trust, or null if it is accepted. A changed
   * identity is refused by `signed` as well, as the engine's cross-signed rule does (when its shield tells it).
   */
  refusal(t: SenderTrust): string | null {
    if (this.policy !== 'all' && t.level === 'identity-changed') return `its sender was verified before and has a new identity since (trust: '${this.policy}')`;
    if (this.policy !== 'verified' || t.level === 'verified') return null;
    return `its sender device is not verified by the bot (${t.level}; trust: 'verified')`;
  }

  /** The engine's refusal of a decryption under the `trust` option, or null if the error is another one. */
  engineRefusal(err: unknown): TrustRefusal | null {
    const code = (err as { code?: unknown }).code;
    const refused = typeof code === 'number' ? this.engineRefusals.get(code) : undefined;
    if (refused === undefined) return null;
    return { refused: `${refused} (trust: '${this.policy}')`, unknownDevice: code !== this.W.DecryptionErrorCode.SenderIdentityVerificationViolation };
  }

  /** `verified`, `signed` or `unsigned` as the store knows the device now, or null when it does not know it. */
  private async deviceLevel(machine: OlmMachine, userId: string, deviceId: string): Promise<TrustLevel | null> {
    const W = this.W;
    const key = `${userId}|${deviceId}`;
    if (this.levels.has(key)) return this.levels.get(key)!;
    const ids = [new W.UserId(userId), new W.DeviceId(deviceId)] as const;
    const device = await machine.getDevice(...ids).finally(() => free(...ids));
    const level: TrustLevel | null = !device
      ? null
      : (await this.identityChanged(machine, userId))
        ? 'identity-changed'
        : device.isVerified() ? 'verified' : device.isCrossSignedByOwner() ? 'signed' : 'unsigned';
    device?.free();
    this.levels.set(key, level);
    return level;
  }
}

/** The {@link EventColumns.trust} code of a level. */
export function trustCode(level: TrustLevel): number {
  return TRUST_LEVELS.indexOf(level) + 1;
}

/** The text of an ID object the engine hands out (a new wasm object on every read), freed once read. */
function idText(id: { toString(): string; free(): void } | undefined | null): string | null {
  if (!id) return null;
  const text = id.toString();
  id.free();
  return text;
}
