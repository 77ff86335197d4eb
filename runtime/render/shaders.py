"""GLSL 3.30 programs of the renderer.

All lighting happens in camera space (OpenCV axes, mm). Varyings are interpolated perspective-
correctly, so the camera-space z written out at a pixel is the exact z of the surface point seen
through that pixel's centre.
"""

#: docs/MODEL.md §4 shading constants: colour = (AMBIENT + DIFFUSE * max(0, n.l)) * ALBEDO
#: + SPECULAR * max(0, r.v)^SHININESS (specular only where n.l > 0)
HEADLIGHT = dict(AMBIENT=0.8, DIFFUSE=0.6 * 0.5, ALBEDO=0.6, SPECULAR=0.6 * 0.1, SHININESS=10.0)

#: most lights a scene may have
MAX_LIGHTS = 8

VERTEX = """
#version 330
uniform mat3 u_R;   // model -> camera rotation
uniform vec3 u_t;   // model -> camera translation, mm
uniform mat4 u_P;   // camera -> clip (camera.projection)
in vec3 in_pos;
in vec3 in_normal;
out vec3 v_pos;     // camera-space position, mm
out vec3 v_normal;  // camera-space vertex normal (unit before interpolation)
void main() {
    vec3 p = u_R * in_pos + u_t;
    v_pos = p;
    v_normal = u_R * in_normal;
    gl_Position = u_P * vec4(p, 1.0);
}
"""

# docs/MODEL.md §4: one directional "head light" u_light (unit, towards the light), v = direction
# from the surface point to the camera; output (grey level, camera z in mm).
HEADLIGHT_FRAGMENT = """
#version 330
uniform vec3 u_light;
in vec3 v_pos;
in vec3 v_normal;
layout(location = 0) out vec2 out_shade_z;
void main() {{
    float len_n = length(v_normal);
    vec3 n = len_n > 0.0 ? v_normal / len_n : vec3(0.0);
    vec3 v = normalize(-v_pos);
    float ndl = dot(n, u_light);
    vec3 r = -u_light + 2.0 * ndl * n;
    float spec = ndl > 0.0 ? pow(max(dot(r, v), 0.0), {SHININESS:.8f}) : 0.0;
    float c = ({AMBIENT:.8f} + {DIFFUSE:.8f} * max(ndl, 0.0)) * {ALBEDO:.8f} + {SPECULAR:.8f} * spec;
    out_shade_z = vec2(c, v_pos.z);
}}
""".format(**HEADLIGHT)

SCENE_VERTEX = """
#version 330
uniform mat3 u_R;
uniform vec3 u_t;
uniform mat4 u_P;
in vec3 in_pos;
in vec3 in_normal;
in vec3 in_color;
out vec3 v_pos;
out vec3 v_normal;
out vec3 v_color;
void main() {
    vec3 p = u_R * in_pos + u_t;
    v_pos = p;
    v_normal = u_R * in_normal;
    v_color = in_color;
    gl_Position = u_P * vec4(p, 1.0);
}
"""

# Phong with several lights, two-sided (a normal facing away from the camera is flipped), no
# attenuation. The depth test uses camera z linearly mapped from [near, far] (u_depth_range), uniform
# precision over the whole scene (objects touching each other or a table far from the near plane). Light i: u_light_vec[i].w == 0 -> directional, xyz = direction towards the light;
# w == 1 -> point light at xyz (mm). Outputs: BGR colour, (camera z mm, instance index + 1).
SCENE_FRAGMENT = """
#version 330
const int MAX_LIGHTS = {MAX_LIGHTS};
uniform int u_n_lights;
uniform vec4 u_light_vec[MAX_LIGHTS];
uniform vec3 u_light_color[MAX_LIGHTS];
uniform vec3 u_ambient;
uniform vec3 u_color;
uniform float u_use_vertex_color;
uniform float u_specular;
uniform float u_shininess;
uniform float u_instance;
uniform vec2 u_depth_range;
in vec3 v_pos;
in vec3 v_normal;
in vec3 v_color;
layout(location = 0) out vec4 out_bgr;
layout(location = 1) out vec2 out_z_id;
void main() {{
    float len_n = length(v_normal);
    vec3 n = len_n > 0.0 ? v_normal / len_n : vec3(0.0);
    vec3 v = normalize(-v_pos);
    if (dot(n, v) < 0.0) n = -n;
    vec3 albedo = mix(u_color, v_color, u_use_vertex_color);
    vec3 c = u_ambient * albedo;
    for (int i = 0; i < u_n_lights; ++i) {{
        vec3 l = u_light_vec[i].w > 0.5 ? normalize(u_light_vec[i].xyz - v_pos) : normalize(u_light_vec[i].xyz);
        float ndl = dot(n, l);
        if (ndl > 0.0) {{
            float spec = pow(max(dot(reflect(-l, n), v), 0.0), u_shininess);
            c += u_light_color[i] * (albedo * ndl + u_specular * spec);
        }}
    }}
    out_bgr = vec4(clamp(c, 0.0, 1.0).bgr, 1.0);
    out_z_id = vec2(v_pos.z, u_instance + 1.0);
    gl_FragDepth = clamp((v_pos.z - u_depth_range.x) / (u_depth_range.y - u_depth_range.x), 0.0, 1.0);
}}
""".format(MAX_LIGHTS=MAX_LIGHTS)
