// What ollama-js makes of the server: list, chat whole and streamed, embed. Run by
// tests/e2e/test_ollama.py beside an installed `ollama` package, with HOST and KEY set.
import { Ollama } from 'ollama'

const client = new Ollama({ host: process.env.HOST, headers: { Authorization: 'Bearer ' + process.env.KEY } })
const listed = await client.list()
const messages = [{ role: 'user', content: 'Hi' }]
const chat = await client.chat({ model: 'smollm2', messages, options: { num_predict: 4 } })
let streamed = ''
const parts = await client.chat({ model: 'smollm2', messages, stream: true, options: { num_predict: 4 } })
for await (const part of parts) streamed += part.message.content
const embedded = await client.embed({ model: 'all-minilm-l6-v2', input: 'a cat' })
console.log(JSON.stringify({
  models: listed.models.length,
  chat: chat.message.content,
  streamed,
  dims: embedded.embeddings[0].length,
}))
