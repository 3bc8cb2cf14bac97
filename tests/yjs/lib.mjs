// Shared helpers of the scenario scripts: stock y-websocket providers on the trip schema, a tap
// on each provider's socket, waiting with deadlines, and the one-line JSON result.

import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as decoding from 'lib0/decoding'

export { Y }

/** How long any single wait may take before the scenario fails. */
export const WAIT_MS = 20000

/**
 * The command line every scenario shares: --url ws://HOST:PORT/yjs --doc NAME --token JWT, plus
 * the scenario's own `extra` options (parseArgs option specs).
 */
export function options (extra = {}) {
  const { values } = parseArgs({
    options: {
      url: { type: 'string' },
      doc: { type: 'string' },
      token: { type: 'string' },
      ...extra
    }
  })
  for (const name of ['url', 'doc', 'token']) {
    if (values[name] === undefined) fail(`missing --${name}`)
  }
  return values
}

/** Root types of the trip schema (seed §4.1), except `collaborators`, whose type is open. */
export function tripTypes (doc) {
  return {
    title: doc.getText('title'),
    description: doc.getText('description'),
    itinerary: doc.getArray('itinerary'),
    budget: doc.getMap('budget'),
    notes: doc.getText('notes'),
    comments: doc.getArray('comments')
  }
}

/** The document as JSON, root type by root type. */
export function tripJson (doc) {
  const out = {}
  for (const [name, type] of Object.entries(tripTypes(doc))) out[name] = type.toJSON()
  return out
}

/**
 * What arrived on a provider's sockets: the highest clock of each client seen in `sync` update
 * and step-2 messages, and the reasons of y-protocols auth (permission denied) messages.
 */
class Tap {
  constructor () {
    this.clocks = new Map()
    this.denied = []
  }

  read (bytes) {
    const decoder = decoding.createDecoder(bytes)
    const type = decoding.readVarUint(decoder)
    if (type === 0) {
      const syncType = decoding.readVarUint(decoder)
      if (syncType === 1 || syncType === 2) {
        const { to } = Y.parseUpdateMeta(decoding.readVarUint8Array(decoder))
        for (const [client, clock] of to) {
          if (clock > (this.clocks.get(client) ?? 0)) this.clocks.set(client, clock)
        }
      }
    } else if (type === 2 && decoding.readVarUint(decoder) === 0) {
      this.denied.push(decoding.readVarString(decoder))
    }
  }
}

/**
 * A stock WebsocketProvider for `opts.doc` with its own Y.Doc. BroadcastChannel is off, so that
 * providers in one process talk through the server only. `client.tap` sees every message.
 */
export function connect (opts, { token = opts.token, name = 'client' } = {}) {
  const doc = new Y.Doc()
  tripTypes(doc)
  const tap = new Tap()
  class TappedWebSocket extends WebSocket {
    constructor (url, protocols) {
      super(url, protocols)
      this.on('message', (data) => tap.read(new Uint8Array(data)))
    }
  }
  const provider = new WebsocketProvider(opts.url, opts.doc, doc, {
    params: { token },
    WebSocketPolyfill: TappedWebSocket,
    disableBc: true
  })
  const closes = []
  provider.on('connection-close', (event) => {
    if (event) closes.push({ code: event.code, reason: event.reason })
  })
  return { name, doc, provider, awareness: provider.awareness, tap, closes, types: tripTypes(doc) }
}

/** Resolves once `client` completed the sync handshake (its `sync` event). */
export function synced (client) {
  return waitFor(() => client.provider.synced, `${client.name} synced`)
}

/** Polls `condition` every 10 ms; rejects with `what` after `ms`. */
export async function waitFor (condition, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(10)
  }
}

export function sleep (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** This client's next clock: the state after its last local edit. */
export function ownClock (client) {
  return Y.getState(client.doc.store, client.doc.clientID)
}

/** Whether the server echoed (and so stored) every local edit of `client` so far. */
export function echoed (client) {
  return (client.tap.clocks.get(client.doc.clientID) ?? 0) >= ownClock(client)
}

/** Whether every client's document holds exactly every client's edits. */
export function sameState (clients) {
  const expected = new Map(clients.map((c) => [c.doc.clientID, ownClock(c)]))
  return clients.every((c) => {
    const vector = Y.decodeStateVector(Y.encodeStateVector(c.doc))
    return [...expected].every(([client, clock]) => (vector.get(client) ?? 0) === clock)
  })
}

/** Closes the socket without a close handshake or awareness goodbye, as a crashed tab would. */
export function dropConnection (client) {
  client.provider.shouldConnect = false
  client.provider.ws.terminate()
}

/** Runs `scenario`, prints its result as one JSON line and exits 0, or prints the error and exits 1. */
export async function run (scenario) {
  try {
    const result = await scenario()
    process.stdout.write(JSON.stringify({ ok: true, ...result }) + '\n')
    process.exit(0)
  } catch (error) {
    fail(error.stack ?? String(error))
  }
}

export function fail (message) {
  process.stdout.write(JSON.stringify({ ok: false, error: message }) + '\n')
  process.exit(1)
}

/** JSON with object keys sorted, so that equal documents print the same. */
export function canonical (value) {
  return JSON.stringify(value, (_key, v) =>
    v !== null && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v)
}
