/**
 * Worker entry of the media pool (see src/pool.ts): runs one media task off the main thread — encrypt bytes or a
 * file as an encrypted attachment, check and decrypt one, or probe a file (src/media-probe.ts).
 */
import { decryptAttachment, encryptAttachment } from '../src/attachments.ts';
import { bytesSource, encryptFile, fileSource, probeAudioVideo, probeImageSource } from '../src/media-probe.ts';
import type { MediaTask } from '../src/protocol.ts';
import { serveTasks, type TaskResult } from '../src/pool.ts';

/** The pool's task handler: one {@link MediaTask} in, its result out (bytes and thumbnails transferred, not copied). */
export default serveTasks<MediaTask, unknown>((task): TaskResult<unknown> => {
  switch (task.op) {
    case 'encrypt': {
      const { data, info } = encryptAttachment(task.data);
      return { value: { data, info }, transfer: [data.buffer as ArrayBuffer] };
    }
    case 'encryptFile':
      return { value: encryptFile(task.src, task.dst) };
    case 'decrypt': {
      const plain = decryptAttachment(task.data, task.info);
      return { value: plain, transfer: [plain.buffer as ArrayBuffer] };
    }
    case 'probe': {
      const probe = task.kind === 'image' ? probeImageSource(task) : probeAudioVideo(task.path ? fileSource(task.path) : bytesSource(task.data!));
      return { value: probe, transfer: probe.thumbnail ? [probe.thumbnail.data.buffer as ArrayBuffer] : [] };
    }
  }
});
