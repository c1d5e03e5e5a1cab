/** The spec's rules for edits as pure functions: validity of a replacement, and the mentions of an edit sent. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { editProblem, type EditSubject, newMentions, readMentions } from '../../src/edits.ts';

const msg = (over: Partial<EditSubject> = {}): EditSubject => ({ sender: '@a:s', type: 'm.room.message', encrypted: false, stateKey: null, content: { body: 'x' }, ...over });
const edit = (over: Partial<EditSubject> = {}): EditSubject => msg({ content: { body: '* y', 'm.new_content': { body: 'y' }, 'm.relates_to': { rel_type: 'm.replace', event_id: '$o' } }, ...over });

test('editProblem: a valid edit; each rule of the spec refuses its case', () => {
  assert.equal(editProblem(edit(), msg()), null);
  assert.match(editProblem(edit({ sender: '@m:s' }), msg())!, /from @m:s/);
  assert.match(editProblem(edit({ type: 'm.sticker' }), msg())!, /type m.sticker/);
  assert.match(editProblem(edit({ stateKey: '' }), msg())!, /state event/);
  assert.match(editProblem(edit(), msg({ stateKey: '' }))!, /original is a state event/);
  assert.match(editProblem(edit(), msg({ content: { 'm.relates_to': { rel_type: 'm.replace', event_id: '$x' } } }))!, /itself an edit/);
  assert.match(editProblem(edit({ content: { body: '* y' } }), msg())!, /m.new_content/);
  assert.match(editProblem(edit({ content: { 'm.new_content': 'y' } }), msg())!, /m.new_content/);
  assert.match(editProblem(edit(), null)!, /cannot be found/);
  // An original still encrypted (as the server holds it): the edit must be encrypted too.
  assert.equal(editProblem(edit({ encrypted: true }), msg({ type: 'm.room.encrypted' })), null);
  assert.match(editProblem(edit(), msg({ type: 'm.room.encrypted' }))!, /encrypted and the edit is not/);
});

test('newMentions: only users (and @room) the previous version did not mention; unknown previous: nobody', () => {
  assert.deepEqual(newMentions({ user_ids: ['@a:s', '@b:s'] }, { user_ids: ['@a:s'] }), { user_ids: ['@b:s'] });
  assert.deepEqual(newMentions({ user_ids: ['@a:s'] }, { user_ids: ['@a:s'] }), {});
  assert.deepEqual(newMentions({ room: true }, {}), { room: true });
  assert.deepEqual(newMentions({ room: true }, { room: true }), {});
  assert.deepEqual(newMentions({ user_ids: ['@a:s'], room: true }, null), {});
});

test('readMentions: malformed values mention nobody', () => {
  assert.deepEqual(readMentions(undefined), {});
  assert.deepEqual(readMentions('x'), {});
  assert.deepEqual(readMentions({ user_ids: ['@a:s', 3], room: 'yes' }), { user_ids: ['@a:s'] });
});
