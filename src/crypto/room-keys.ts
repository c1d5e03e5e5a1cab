/**
 * The OlmMachine's room-key callbacks for the crypto actor: keys that arrive name the sessions whose kept events
 * to retry; withheld notices are remembered by session, with their sender (decryptOne tells from it whether a
 * withheld key came from the event's sender, which makes the failure final).
 */
import { free } from '../memory.ts';

// Types only (the binding's one door is actor.ts).
type OlmMachine = import('@matrix-org/matrix-sdk-crypto-wasm').OlmMachine;
type RoomKeyInfo = import('@matrix-org/matrix-sdk-crypto-wasm').RoomKeyInfo;
type RoomKeyWithheldInfo = import('@matrix-org/matrix-sdk-crypto-wasm').RoomKeyWithheldInfo;

/** Withheld notices remembered (their senders), to tell whether a withheld key came from the event's sender. */
const MAX_WITHHELD = 10_000;

/**
 * Registers the callbacks on `machine`: `arrived` gets the sessions whose keys came, each time some do;
 * `withheldBy` maps the newest {@link MAX_WITHHELD} withheld sessions to their notices' senders.
 */
export function watchRoomKeys(machine: OlmMachine, arrived: (sessionIds: string[]) => void, withheldBy: Map<string, string>): void {
  machine.registerRoomKeyUpdatedCallback(async (infos: RoomKeyInfo[]) => {
    const ids = infos.map((info) => info.sessionId);
    free(...infos);
    arrived(ids);
  });
  machine.registerRoomKeysWithheldCallback(async (infos: RoomKeyWithheldInfo[]) => {
    for (const info of infos) {
      withheldBy.delete(info.sessionId); // re-inserted last: the oldest notices are dropped first
      const sender = info.sender;
      withheldBy.set(info.sessionId, sender.toString());
      free(sender, info);
    }
    while (withheldBy.size > MAX_WITHHELD) withheldBy.delete(withheldBy.keys().next().value!);
  });
}
