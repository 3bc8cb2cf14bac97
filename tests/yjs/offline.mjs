// Scenario 2: a provider goes offline, it and an online client both edit the same parts of the
// trip, it reconnects, and both converge; a fresh client then loads the merged document from
// the server. Prints {ok, json}.

import { Y, canonical, connect, echoed, options, run, sameState, synced, tripJson, waitFor } from './lib.mjs'

const opts = options()

function item (id, place) {
  const map = new Y.Map()
  map.set('id', id)
  map.set('place', place)
  return map
}

function text (client) {
  return canonical(tripJson(client.doc))
}

run(async () => {
  const a = connect(opts, { name: 'a' })
  const b = connect(opts, { name: 'b' })
  await Promise.all([synced(a), synced(b)])
  a.types.title.insert(0, 'Lisbon')
  a.types.itinerary.push([item('day1', 'Alfama'), item('day2', 'Belem')])
  a.types.budget.set('currency', 'EUR')
  await waitFor(() => sameState([a, b]), 'b to receive a\'s first edits')

  a.provider.disconnect()
  await waitFor(() => !a.provider.wsconnected, 'a to go offline')
  a.types.title.insert(0, 'Porto & ')
  a.types.itinerary.push([item('a-offline', 'Sintra')])
  a.types.itinerary.get(0).set('place', 'Alfama by tram')
  a.types.budget.set('total', 1000)
  a.types.notes.insert(0, 'offline note. ')
  b.types.title.insert(b.types.title.length, ' in May')
  b.types.itinerary.push([item('b-online', 'Cascais')])
  b.types.itinerary.delete(1)
  b.types.budget.set('total', 2000)
  b.types.notes.insert(0, 'online note. ')
  await waitFor(() => echoed(b), 'the echo of b\'s edits')
  if (a.types.itinerary.toJSON().some((i) => i.id === 'b-online')) {
    throw new Error('a received b\'s edit while offline')
  }

  a.provider.connect()
  await synced(a)
  await waitFor(() => sameState([a, b]), 'a and b to converge after the reconnect')
  if (text(a) !== text(b)) throw new Error(`a and b differ:\n${text(a)}\n${text(b)}`)
  const json = tripJson(a.doc)
  const ids = json.itinerary.map((i) => i.id)
  for (const id of ['day1', 'a-offline', 'b-online']) {
    if (!ids.includes(id)) throw new Error(`itinerary item ${id} lost: ${JSON.stringify(json)}`)
  }
  if (ids.includes('day2')) throw new Error(`b's delete lost: ${JSON.stringify(json)}`)
  for (const part of ['Porto & ', 'Lisbon', ' in May']) {
    if (!json.title.includes(part)) throw new Error(`title lost "${part}": ${json.title}`)
  }

  const fresh = connect(opts, { name: 'fresh' })
  await synced(fresh)
  await waitFor(() => sameState([a, b, fresh]), 'a fresh client to load both sides\' edits')
  if (text(fresh) !== text(a)) throw new Error(`the fresh client differs:\n${text(fresh)}\n${text(a)}`)
  return { json }
})
