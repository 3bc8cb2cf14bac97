// Scenario 1: several providers edit every root type of one trip at once; all converge to the
// same document, and every client's edits come back to it (the server's acknowledgement).
// Prints {ok, clients, edits, json}.

import { Y, canonical, connect, echoed, options, run, sameState, sleep, synced, tripJson, waitFor } from './lib.mjs'

const opts = options({
  clients: { type: 'string', default: '4' },
  edits: { type: 'string', default: '40' }
})

/** A small deterministic generator (mulberry32), one per client. */
function random (seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function edit (client, rnd, i) {
  const { title, description, itinerary, budget, notes, comments } = client.types
  const pick = (n) => Math.floor(rnd() * n)
  const word = `${client.name}-${i} `
  switch (pick(8)) {
    case 0:
      title.insert(pick(title.length + 1), word)
      break
    case 1:
      if (description.length > 4) description.delete(pick(description.length - 3), 3)
      else description.insert(0, word)
      break
    case 2: {
      const item = new Y.Map()
      item.set('id', `${client.name}-${i}`)
      item.set('day', pick(5) + 1)
      item.set('place', word.trim())
      itinerary.insert(pick(itinerary.length + 1), [item])
      break
    }
    case 3:
      if (itinerary.length > 0) itinerary.get(pick(itinerary.length)).set('place', word.trim())
      else budget.set('currency', 'EUR')
      break
    case 4:
      if (itinerary.length > 2) itinerary.delete(pick(itinerary.length))
      else notes.insert(0, word)
      break
    case 5:
      budget.set(['total', 'flights', 'hotels', 'currency'][pick(4)], pick(5000))
      break
    case 6:
      notes.insert(pick(notes.length + 1), word, { bold: true })
      break
    default:
      comments.push([{ by: client.name, text: word.trim() }])
  }
}

run(async () => {
  const clients = Array.from({ length: Number(opts.clients) }, (_, n) => connect(opts, { name: `c${n}` }))
  await Promise.all(clients.map(synced))
  const edits = Number(opts.edits)
  await Promise.all(clients.map(async (client, n) => {
    const rnd = random(n + 1)
    for (let i = 0; i < edits; i++) {
      edit(client, rnd, i)
      if (rnd() < 0.3) await sleep(Math.floor(rnd() * 5))
    }
  }))
  await waitFor(() => sameState(clients), 'every client to hold every edit')
  await waitFor(() => clients.every(echoed), 'the echo of every client\'s edits')
  const json = clients.map((c) => canonical(tripJson(c.doc)))
  if (!json.every((j) => j === json[0])) {
    throw new Error(`the same edits gave different documents:\n${json.join('\n')}`)
  }
  return { clients: clients.length, edits: edits * clients.length, json: JSON.parse(json[0]) }
})
