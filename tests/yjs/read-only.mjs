// Scenario 5: a reader's edits are refused with a y-protocols "permission denied" message: they
// reach neither the other clients nor the server (a fresh client does not load them), while the
// reader keeps receiving everybody else's edits. A client whose token grants nothing is refused
// at the handshake (or closed) and receives nothing. Prints {ok, denied, stranger_closes, json}.

import { Y, canonical, connect, echoed, options, run, sameState, sleep, synced, tripJson, waitFor } from './lib.mjs'

const opts = options({
  'reader-token': { type: 'string' },
  'stranger-token': { type: 'string' }
})

const READER_TEXT = 'reader was here'

function hasReaderEdits (client) {
  const json = tripJson(client.doc)
  return json.notes.includes(READER_TEXT) || json.itinerary.some((i) => i.id === 'reader-item')
}

run(async () => {
  const editor = connect(opts, { name: 'editor' })
  const other = connect(opts, { name: 'other-editor' })
  const reader = connect(opts, { name: 'reader', token: opts['reader-token'] })
  await Promise.all([synced(editor), synced(other), synced(reader)])

  editor.types.title.insert(0, 'Kyoto')
  await waitFor(() => reader.types.title.toString() === 'Kyoto', 'the reader to receive an edit')

  reader.types.notes.insert(0, READER_TEXT)
  const item = new Y.Map()
  item.set('id', 'reader-item')
  reader.types.itinerary.push([item])
  await waitFor(() => reader.tap.denied.length > 0, 'a permission-denied message to the reader')

  editor.types.budget.set('total', 1200)
  await waitFor(() => echoed(editor), 'the echo of the editor\'s edit')
  await waitFor(() => sameState([editor, other]), 'the other editor to receive the editor\'s edit')
  await waitFor(() => reader.types.budget.get('total') === 1200,
    'the reader to receive an edit made after its refused one')
  await sleep(500)
  for (const client of [editor, other]) {
    if (hasReaderEdits(client)) throw new Error(`${client.name} received the reader's edit`)
  }

  const fresh = connect(opts, { name: 'fresh' })
  await synced(fresh)
  if (hasReaderEdits(fresh)) throw new Error('the server stored the reader\'s edit')
  if (canonical(tripJson(fresh.doc)) !== canonical(tripJson(editor.doc))) {
    throw new Error(`a fresh client differs from the editor:\n${canonical(tripJson(fresh.doc))}\n${canonical(tripJson(editor.doc))}`)
  }

  const stranger = connect(opts, { name: 'stranger', token: opts['stranger-token'] })
  await waitFor(() => stranger.closes.length > 0, 'the stranger\'s connection to be refused')
  stranger.provider.destroy()
  if (stranger.provider.synced || stranger.tap.clocks.size > 0 || stranger.types.title.length > 0) {
    throw new Error('the stranger received the document')
  }
  return { denied: reader.tap.denied, stranger_closes: stranger.closes, json: tripJson(editor.doc) }
})
