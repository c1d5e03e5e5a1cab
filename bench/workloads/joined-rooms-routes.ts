/**
 * Replay-server routes (its `routes` option) for the cold-start and memory workloads: `GET /joined_rooms` answers
 * the rooms of the replayed initial sync, as Synapse would for a bot joined to them (matrix-bot-sdk asks at start
 * and treats every room it was not told about as newly joined). The room IDs come from the JSON file named by
 * the `BENCH_JOINED_ROOMS_FILE` environment variable, read when the server's process starts.
 * @module
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';

const file = process.env.BENCH_JOINED_ROOMS_FILE;
const body = Buffer.from(JSON.stringify({ joined_rooms: file ? (JSON.parse(readFileSync(file, 'utf8')) as string[]) : [] }));

/** Answers `GET /_matrix/client/v3/joined_rooms`; leaves every other request to the replay server. */
export default function routes(req: IncomingMessage, res: ServerResponse, url: URL): boolean {
  if (req.method !== 'GET' || url.pathname !== '/_matrix/client/v3/joined_rooms') return false;
  req.resume();
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
  res.end(body);
  return true;
}
