// Scenario 3: a writer builds a whole trip in many small updates; a client that joins while the
// writer is online, and another that joins after everybody left, each hold the whole document
// as soon as the sync handshake completes. Prints {ok, updates, json}.

import { Y, canonical, connect, echoed, options, run, synced, tripJson, waitFor } from './lib.mjs'

const opts = options({ items: { type: 'string', default: '50' } })

run(async () => {
  const writer = connect(opts, { name: 'writer' })
  await synced(writer)
  let updates = 0
  writer.doc.on('update', () => updates++)
  const { title, description, itinerary, budget, notes, comments } = writer.types
  title.insert(0, 'Japan in autumn')
  for (let i = 0; i < 100; i++) description.insert(description.length, `line ${i}; `)
  description.delete(0, 40)
  for (let i = 0; i < Number(opts.items); i++) {
    const item = new Y.Map()
    const stops = new Y.Array()
    item.set('id', `item-${i}`)
    item.set('day', 1 + (i % 10))
    item.set('stops', stops)
    itinerary.push([item])
    stops.push([`stop ${i}a`, `stop ${i}b`])
  }
  itinerary.delete(3, 2)
  itinerary.get(0).set('day', 0)
  const lines = new Y.Map()
  budget.set('lines', lines)
  budget.set('currency', 'JPY')
  for (let i = 0; i < 20; i++) lines.set(`line-${i}`, i * 1000)
  notes.insert(0, 'Bring a rail pass.', { bold: true })
  for (let i = 0; i < 30; i++) comments.push([{ by: 'writer', text: `comment ${i}` }])
  await waitFor(() => echoed(writer), 'the echo of the writer\'s edits')
  const expected = canonical(tripJson(writer.doc))

  const online = connect(opts, { name: 'joiner-while-online' })
  await synced(online)
  const whileOnline = canonical(tripJson(online.doc))
  online.provider.destroy()
  writer.provider.destroy()
  await waitFor(() => !writer.provider.wsconnected && !online.provider.wsconnected, 'disconnects')

  const later = connect(opts, { name: 'joiner-after-all-left' })
  await synced(later)
  const afterAllLeft = canonical(tripJson(later.doc))
  for (const [who, got] of [['a joiner while the writer is online', whileOnline], ['a joiner after all left', afterAllLeft]]) {
    if (got !== expected) throw new Error(`${who} got, after the sync handshake:\n${got}\nexpected:\n${expected}`)
  }
  return { updates, json: JSON.parse(expected) }
})
