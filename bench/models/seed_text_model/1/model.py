"""Text-in/text-out BLS model over a `tensorrt_llm`-contract engine: the seed tutorial's `ensemble` for benchmarks.

text_input -> tokenize (no special tokens added: the client's rendered prompt already holds them) -> decoupled,
streaming BLS call to the engine -> incremental detokenization with special tokens kept (so `<tool_call>` reaches
the client) -> text_output, one response per engine chunk when `stream` is true, else one response at the end.
"""

import asyncio
import concurrent.futures
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers.decoders import DecodeStream
from transformers import AutoTokenizer

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
_END = object()


def _scalar(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return tensor.as_numpy().reshape(-1)[0]


def _text_response(text):
    array = np.array([[text.encode("utf-8")]], dtype=np.object_)
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", array)])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("seed_text_model streams: set model_transaction_policy { decoupled: true }")
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.tokenizer = AutoTokenizer.from_pretrained(params["tokenizer_dir"])
        self.engine = params.get("tensorrt_llm_model_name", "tensorrt_llm")
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_id
        self.stop_ids = {i for i in (self.end_id, self.tokenizer.eos_token_id) if i is not None}
        self._executor_set = False
        pb_utils.Logger.log_info(f"seed_text_model ready: engine={self.engine}")

    async def execute(self, requests):
        if not self._executor_set:
            asyncio.get_running_loop().set_default_executor(
                concurrent.futures.ThreadPoolExecutor(128, thread_name_prefix="seed-bls"))
            self._executor_set = True
        await asyncio.gather(*(self._handle(request) for request in requests))
        return None

    async def _handle(self, request):
        sender = request.get_response_sender()
        try:
            text = _scalar(request, "text_input")
            text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            max_tokens = int(_scalar(request, "max_tokens"))
            stream = bool(_scalar(request, "stream", False))
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            inputs = [
                pb_utils.Tensor("input_ids", np.array([ids], dtype=np.int32)),
                pb_utils.Tensor("input_lengths", np.array([[len(ids)]], dtype=np.int32)),
                pb_utils.Tensor("request_output_len", np.array([[max_tokens]], dtype=np.int32)),
                pb_utils.Tensor("end_id", np.array([[self.end_id]], dtype=np.int32)),
                pb_utils.Tensor("pad_id", np.array([[self.pad_id]], dtype=np.int32)),
                pb_utils.Tensor("streaming", np.array([[True]], dtype=np.bool_)),
                pb_utils.Tensor("exclude_input_in_output", np.array([[True]], dtype=np.bool_)),
            ]
            temperature = _scalar(request, "temperature")
            if temperature is not None:
                inputs.append(pb_utils.Tensor("temperature", np.array([[temperature]], dtype=np.float32)))
            infer = pb_utils.InferenceRequest(model_name=self.engine, inputs=inputs,
                                              requested_output_names=["output_ids"])
            responses = await infer.async_exec(decoupled=True)
            iterator = iter(responses)
            loop = asyncio.get_running_loop()
            decoder = DecodeStream(skip_special_tokens=False)
            backend = self.tokenizer._tokenizer
            parts = []
            while True:
                response = await loop.run_in_executor(None, next, iterator, _END)
                if response is _END:
                    break
                if response.has_error():
                    raise RuntimeError(f"engine failed: {response.error().message()}")
                tensor = pb_utils.get_output_tensor_by_name(response, "output_ids")
                if tensor is None:
                    continue
                chunk = ""
                for token in tensor.as_numpy().reshape(-1).tolist():
                    if token in self.stop_ids:
                        continue
                    piece = decoder.step(backend, token)
                    if piece:
                        chunk += piece
                if chunk:
                    parts.append(chunk)
                    if stream:
                        sender.send(_text_response(chunk))
            if stream:
                sender.send(flags=_FINAL)
            else:
                sender.send(_text_response("".join(parts)), flags=_FINAL)
        except Exception as exc:
            pb_utils.Logger.log_error(f"seed_text_model: {type(exc).__name__}: {exc}")
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=_FINAL)
