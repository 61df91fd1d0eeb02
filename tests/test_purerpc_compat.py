"""What `purerpc_compat` patches outside purerpc itself keeps its outward behaviour."""

from __future__ import annotations

from hyperframe.frame import DataFrame

import der_actors.transport.purerpc_compat  # noqa: F401  (installs the patches)


def test_a_data_frames_repr_is_the_text_hyperframe_gave():
    # h2 formats it for every received frame; the patch only stops hexlifying the whole payload
    assert repr(DataFrame(3, data=bytes(range(200)))) == "DataFrame(stream_id=3, flags=[]): <hex:00010203040506070809...>"
    assert repr(DataFrame(3, data=b"\x0a\x0b")) == "DataFrame(stream_id=3, flags=[]): <hex:0a0b>"
    assert repr(DataFrame(1, data=bytes(10))) == "DataFrame(stream_id=1, flags=[]): <hex:00000000000000000000>"
    assert repr(DataFrame(1)) == "DataFrame(stream_id=1, flags=[]): None"
