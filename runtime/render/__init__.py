"""Headless OpenGL (EGL, moderngl) renderer: render-and-compare views and synthetic scenes. No torch.

```python
from mrcnet.runtime.render import Renderer, load_mesh
r = Renderer()                                   # EGL: NVIDIA device 0, else Mesa llvmpipe
r.add_object(1, load_mesh("models/obj_000001.ply"))
out = r.render([1, 1], R, t, K)                  # out.rgb (2,256,256,3), mask, depth (mm), box_map
```
Conventions: OpenCV camera, mm, ``X_cam = R X_model + t``; pixel i spans [i, i+1) and is covered
when its centre i + 0.5 is inside a triangle (no anti-aliasing).
"""
from .camera import NEAR_MM, ORTHO_TOL
from .context import EGLDevice, RenderContextError, get_context, list_devices
from .mesh import Mesh, MeshError, load_mesh, vertex_normals
from .renderer import Renderer, RenderResult
from .scene import DEFAULT_AMBIENT, DEFAULT_LIGHTS, Light, SceneObject, SceneResult

__all__ = [
    "Renderer", "RenderResult", "Mesh", "MeshError", "load_mesh", "vertex_normals",
    "SceneObject", "SceneResult", "Light", "DEFAULT_LIGHTS", "DEFAULT_AMBIENT",
    "RenderContextError", "EGLDevice", "get_context", "list_devices", "NEAR_MM", "ORTHO_TOL",
]
